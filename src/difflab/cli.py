"""Command line: ``difflab SUBCOMMAND ...`` (also ``python -m difflab``). All argument parsing
lives here; each command calls the module that does the work.

``difflab train`` reaches every config field with ``--set section.field=value``; its flags are
shorthands for the common fields, declared in ``TRAIN_FLAGS`` against the config dataclasses (a
flag whose field does not exist fails at parser build time, and a test builds the parser), and
their values go through the same coercion and validation as ``--set``. Expected failures (bad
input, missing or unreadable files, divergence) print one line ``difflab: error: ...`` and exit
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
import time
import warnings
from pathlib import Path


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown option, bad int, missing argument) as one line."""

    def error(self, message):
        self.exit(2, f"difflab: error: {self.prog}: {message}\n")


# flag -> (config field, help). Type and default come from the config dataclass.
TRAIN_FLAGS = {
    "--data": ("data.dataset", "data set: mnist, cifar10, digits or folder"),
    "--data-dir": ("data.data_dir", "folder with the data files (else $DIFFLAB_DATA, else "
                   "~/.cache/difflab/data)"),
    "--folder": ("data.folder", "image folder for --data folder"),
    "--out": ("loop.out", "run directory"),
    "--steps": ("loop.steps", "stop after this many steps (alone: no time limit)"),
    "--minutes": ("loop.minutes", "stop after this much training time"),
    "--threads": ("loop.threads", "torch CPU threads"),
    "--eval-every": ("loop.eval_every", "log FID/KID (difflab features, test split) every K "
                     "steps (0: off)"),
    "--eval-n": ("loop.eval_n", "samples per evaluation"),
    "--seed": ("run.seed", "seed of initialization, data order and noise"),
    "--device": ("run.device", "cpu, cuda, cuda:N or mps"),
    "--precision": ("run.precision", "auto (bf16 only where the hardware runs it natively), "
                    "bf16 or fp32"),
    "--batch-size": ("optim.batch_size", "images per step"),
    "--final-samples": ("sample.final_samples", "samples saved to samples.npz at the end"),
}


def config_field(dotted: str):
    """(section dataclass, field) of ``section.field`` in TrainConfig; KeyError if it does not exist."""
    from difflab.config import TrainConfig

    section, _, name = dotted.partition(".")
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    target = sections[section].default_factory()
    fields = {f.name: f for f in dataclasses.fields(target)}
    return target, fields[name]


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model (default: the MNIST recipe)",
                       description="Train a denoiser, then sample it and write report.md in the "
                       "run directory.")
    for flag, (dotted, help_text) in TRAIN_FLAGS.items():
        target, fld = config_field(dotted)  # KeyError here if a flag names no config field
        default = getattr(target, fld.name)
        p.add_argument(flag, dest=dotted, metavar=fld.name.upper(),
                       help=f"{help_text} ({dotted}, default {default})")
    p.add_argument("--unconditional", dest="data.class_conditional", action="store_const",
                   const="false", help="ignore labels (default: class-conditional training with "
                   "label dropout, sampled with classifier-free guidance)")
    p.add_argument("--no-bf16", dest="run.precision", action="store_const", const="fp32",
                   help="the same as --precision fp32")
    p.add_argument("--config", help="TOML or JSON file of config sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty "
                   "directory that is not a difflab run (refused otherwise)")
    p.set_defaults(func=cmd_train)


def add_sample_parser(sub) -> None:
    from difflab.diffusion.generation import SAMPLERS
    from difflab.diffusion.schedules import GRIDS

    p = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Sample a trained run and write a PNG grid (and .npz). "
                       "Sampler, steps, grid and guidance default to the run's recipe.")
    p.add_argument("checkpoint", help="run directory or its checkpoint.json")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's)")
    p.add_argument("--grid", choices=[*GRIDS, "optimized"], help="sigma grid (default: the "
                   "run's); optimized: the grid difflab schedule made for this sampler and steps")
    p.add_argument("--eta", type=float, help="DDIM stochasticity (0 deterministic, 1 DDPM)")
    p.add_argument("--class-label", type=int, help="class to draw (conditional models)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: "
                   "the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png", help="PNG grid path (default grid.png)")
    p.add_argument("--npz", help="also save all samples in [0, 1] to this .npz")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the run's if present)")
    p.add_argument("--precision", help="auto, bf16 or fp32 (default: the run's)")
    p.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32",
                   help="the same as --precision fp32")
    p.set_defaults(func=cmd_sample)


def add_eval_parser(sub) -> None:
    from difflab.evaluation.evaluate import REFERENCES

    p = sub.add_parser("eval", help="FID/KID/IS/precision-recall of samples against a data split")
    p.add_argument("samples", nargs="?", default=None,
                   help="samples .npz/.npy, image folder or run directory; omit to cache "
                   "reference stats")
    p.add_argument("--ref", required=True, choices=REFERENCES, help="reference split")
    p.add_argument("--n", type=int, default=None,
                   help="number of samples (default: all; 1000 from a run)")
    p.add_argument("--data-dir", default=None,
                   help="data directory (default: $DIFFLAB_DATA or ~/.cache/difflab/data)")
    p.add_argument("--inception-weights", default=None, help="pytorch-fid "
                   "pt_inception-2015-12-05-6726825d.pth: adds Inception-v3 metrics")
    p.add_argument("--sampler", default=None, help="sampler for a run (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for a run")
    p.add_argument("--guidance", type=float, default=None, help="guidance for a run")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and metric subsets")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--nll", action="store_true", help="instead of sample metrics: the run's "
                   "negative log-likelihood in bits/dim on --ref images (probability-flow ODE)")
    p.add_argument("--nll-n", type=int, default=128, help="images for --nll (default 128)")
    p.add_argument("--nll-steps", type=int, default=50, help="RK4 steps for --nll (default 50)")
    p.set_defaults(func=cmd_eval)


def add_schedule_parser(sub) -> None:
    p = sub.add_parser("schedule", help="optimize the sigma grid of a sampler for a run",
                       description="Optimize the noise levels of SAMPLER at STEPS steps for a "
                       "trained run from a few dozen of its own trajectories (GITS dynamic "
                       "programming, Chen et al. 2024), save them in RUN/schedules.json; then "
                       "difflab sample RUN --grid optimized uses them.")
    p.add_argument("checkpoint", help="run directory")
    p.add_argument("--sampler", default=None, help="deterministic sampler (default: the run's)")
    p.add_argument("--steps", "--nfe", type=int, required=True, help="sampler steps (= network "
                   "evaluations for every sampler but heun)")
    p.add_argument("--n", type=int, default=32, help="trajectories (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_schedule)


def add_bench_parser(sub) -> None:
    from difflab.bench import BUDGETS, EXECUTORS, PROBLEMS

    p = sub.add_parser("bench", help="benchmarks: bench optimizers (Langevin vs SGD/momentum/Adam)")
    p.add_argument("what", choices=["optimizers"], help="what to benchmark")
    p.add_argument("--problem", default="cifar10-cnn", choices=PROBLEMS)
    p.add_argument("--budget", default="quick", choices=BUDGETS)
    p.add_argument("--executor", default="sequential", choices=EXECUTORS)
    p.add_argument("--workers", type=int, default=2, help="process/local-Ray workers")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="bench-optimizers", help="output directory")
    p.add_argument("--data-dir", default=None, help="data directory (else $DIFFLAB_DATA)")
    p.add_argument("--report-only", action="store_true",
                   help="only regenerate the report from OUT/results.jsonl")
    p.set_defaults(func=cmd_bench)


RESTORE_HELP = {"inpaint": "fill the pixels a mask marks black",
                "upscale": "super-resolve a small image by an integer factor",
                "denoise": "remove Gaussian noise of known std", "deblur": "undo a known blur",
                "colorize": "colour a grayscale image (colour models)",
                "edit": "SDEdit: noise an image to a strength, then sample from there"}


def add_restore_parsers(sub) -> None:
    """``difflab inpaint|upscale|denoise|deblur|colorize|edit RUN IMAGE ...``."""
    from difflab.restoration.solvers import SOLVERS

    for task, help_text in RESTORE_HELP.items():
        p = sub.add_parser(task, help=help_text, description=f"{help_text[0].upper()}"
                           f"{help_text[1:]} with a trained run (PNG/JPEG in, PNG out).")
        p.add_argument("checkpoint", help="run directory or its checkpoint.json")
        p.add_argument("image", help="image file, or a folder of images of one size")
        if task == "inpaint":
            p.add_argument("--mask", required=True, help="image of the same size: white = "
                           "known pixels, black = pixels to fill (or a folder, one per image)")
        if task == "upscale":
            p.add_argument("--factor", type=int, required=True, help="integer upscaling factor")
        if task == "denoise":
            p.add_argument("--sigma", type=float, required=True,
                           help="noise std in [0, 1] pixel units, e.g. 0.2")
        if task == "deblur":
            p.add_argument("--kernel", default="gaussian:1.0",
                           help="gaussian:STD or box:SIZE (default gaussian:1.0)")
        if task == "edit":
            p.add_argument("--strength", type=float, default=0.5,
                           help="how far to noise the image, 0 (unchanged) to 1 (a new sample)")
        else:
            p.add_argument("--method", choices=list(SOLVERS), default="ddnm",
                           help="solver (default ddnm)")
        p.add_argument("--steps", type=int, default=None, help="solver steps (default 50)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--class-label", type=int, help="restore as this class, with the run's "
                       "guidance (class-conditional runs; default: unconditional)")
        p.add_argument("--out", default=f"{task}.png", help="PNG file, or a folder for a folder "
                       f"of images (default {task}.png)")
        p.set_defaults(func=cmd_restore, task=task)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="difflab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for add in (add_train_parser, add_sample_parser, add_eval_parser, add_schedule_parser,
                add_restore_parsers, add_bench_parser):
        add(sub)
    return parser


def train_config(args):
    """The TrainConfig of ``difflab train`` arguments: defaults, then --config, then flags,
    then --set; validated."""
    from difflab.config import TrainConfig, load_file, parse_overrides, update, validate

    config = TrainConfig()
    if args.config:
        update(config, load_file(args.config))
    flags = {}
    for dotted in [d for d, _ in TRAIN_FLAGS.values()] + ["data.class_conditional", "run.precision"]:
        value = getattr(args, dotted, None)
        if value is not None:
            section, _, name = dotted.partition(".")
            flags.setdefault(section, {})[name] = value
    update(config, flags)
    if getattr(args, "loop.steps") is not None and getattr(args, "loop.minutes") is None:
        config.loop.minutes = None  # --steps alone means "exactly this many steps"
    update(config, parse_overrides(args.set))
    return validate(config)


def cmd_train(args) -> int:
    from difflab.runs import train_run

    config = train_config(args)
    report = train_run(config, resume=args.resume, force=args.force)
    print(f"report: {report}")
    print(f"samples: {Path(config.loop.out) / 'samples.png'}")
    return 0


def check_sampling_args(args) -> None:
    """Ranges of the sampling options shared by ``sample`` and ``eval``, checked before loading."""
    from difflab.diffusion.generation import MAX_STEPS, get_sampler

    if args.sampler is not None:
        get_sampler(args.sampler)
    for name, value, low in (("--n", args.n, 1), ("--steps", args.steps, 1),
                             ("--batch-size", getattr(args, "batch_size", 1), 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if args.steps is not None and args.steps > MAX_STEPS:
        raise UsageError(f"--steps must be at most {MAX_STEPS}, got {args.steps}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63), got {args.seed}")
    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    for name, suffix in (("out", ".png"), ("npz", ".npz"), ("json", ".json")):
        path = getattr(args, name, None)
        if path is not None and (Path(path).is_dir() or Path(path).suffix.lower() != suffix):
            raise UsageError(f"--{name} {path}: give a file name ending in {suffix}"
                             + (" (it is a directory)" if Path(path).is_dir() else ""))


def cmd_sample(args) -> int:
    from difflab.evaluation.report import save_grid, save_npz
    from difflab.runs import load

    check_sampling_args(args)
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {args.eta}")
    model = load(args.checkpoint, device=args.device, precision=args.precision)
    sampler = args.sampler or model.config.sample.sampler
    if args.eta is not None and sampler != "ddim":
        raise UsageError(f"--eta applies only to --sampler ddim, not {sampler}")
    classes = model.shape.num_classes
    if args.class_label is not None and not 0 <= args.class_label < max(classes, 1):
        raise UsageError(f"--class-label {args.class_label}: the model has "
                         f"{classes or 'no'} classes")
    options = {"eta": args.eta} if args.eta is not None else {}
    started = time.perf_counter()
    images = model.generate(args.n, args.steps, args.sampler, args.guidance, args.seed,
                            grid=args.grid, class_label=args.class_label,
                            batch_size=args.batch_size, **options).cpu()
    recipe = model.config.sample
    print(f"{args.n} samples in {time.perf_counter() - started:.1f} s ({sampler}, "
          f"{args.steps or recipe.steps} steps, guidance "
          f"{recipe.guidance if args.guidance is None else args.guidance:g}, {model.precision})")
    print(f"grid: {save_grid(images[:256], args.out)}")
    if args.npz:
        print(f"samples: {save_npz(images, args.npz)}")
    return 0


def cmd_eval(args) -> int:
    from difflab.evaluation import evaluate as ev
    from difflab.evaluation.metrics import MetricsError

    dataset, split = ev.parse_reference(args.ref)
    check_sampling_args(args)
    if args.nll_n < 1 or args.nll_steps < 1:
        raise UsageError(f"--nll-n and --nll-steps must be at least 1, got {args.nll_n} and "
                         f"{args.nll_steps}")
    if args.nll:
        return eval_nll(args, ev.load_split(dataset, split, args.data_dir))
    if args.n is not None and args.n < 2:
        raise MetricsError(f"--n must be at least 2 (FID needs a covariance), got {args.n}")
    if args.samples is None:
        extractors = [ev.difflab_extractor(dataset)]
        if args.inception_weights:
            extractors.append(ev.inception_extractor(args.inception_weights))
        for e in extractors:
            for ref in (args.ref, ev._floor_reference(args.ref)):
                feats, _ = ev.reference_features(ref, e, args.data_dir, verbose=True)
                print(f"{ref}: {len(feats)} images, {feats.shape[1]}-d {e.name} features cached in "
                      f"{ev.cache_dir() / f'{ref}-{e.tag}.npz'}")
        return 0
    path = Path(args.samples).expanduser()
    if path.is_dir() and (path / "checkpoint.json").is_file() or path.suffix == ".json":
        from difflab.runs import load

        model = load(path)
        channels, size = ev.SHAPES[dataset]
        if model.shape.item != (channels, size, size):
            raise MetricsError(f"{path}: the run makes images of shape {model.shape.item}; "
                               f"{args.ref} needs {(channels, size, size)}")
        n = args.n or 1000
        print(f"sampling {n} images from {path} ...", file=sys.stderr, flush=True)
        images = model.generate(n, args.steps, args.sampler, args.guidance, args.seed).cpu()
    else:
        images = ev.load_samples(path, dataset, args.n)
    result = ev.evaluate_images(images, args.ref, args.data_dir, args.inception_weights,
                                args.seed, verbose=True)
    print(ev.format_result(result, args.samples))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def eval_nll(args, images) -> int:
    """``difflab eval RUN --ref SPLIT --nll``: bits/dim of the run's EMA model on the first
    ``--nll-n`` images of a split (8-bit data in [-1, 1], uniformly dequantized)."""
    from difflab.diffusion.likelihood import evaluate_nll
    from difflab.runs import load

    if args.samples is None:
        raise UsageError("--nll needs a run directory (or its checkpoint.json)")
    model = load(args.samples)
    if model.shape.item != tuple(images.shape[1:]):
        raise UsageError(f"{args.samples}: the run makes images of shape {model.shape.item}; "
                         f"{args.ref} has {tuple(images.shape[1:])}")
    result = evaluate_nll(model.denoiser, images[:args.nll_n].to(model.device), steps=args.nll_steps,
                          seed=args.seed)
    print(f"NLL {result['nll_bpd']:.4f} ± {result['nll_bpd_stderr']:.4f} bits/dim "
          f"({result['nll_images']} images, uniform dequantization, probability-flow ODE with "
          f"{args.nll_steps} RK4 steps, Hutchinson trace estimator)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_restore(args) -> int:
    """The restoration commands: read the image(s) and mask, restore, write PNGs."""
    import torch

    from difflab.data import read_images
    from difflab.evaluation.report import save_image
    from difflab.runs import load

    if args.steps is not None and not 1 <= args.steps <= 10_000:
        raise UsageError(f"--steps must be in [1, 10000], got {args.steps}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63), got {args.seed}")
    strength = getattr(args, "strength", 0.5)
    if not 0 <= strength <= 1:
        raise UsageError(f"--strength must be in [0, 1], got {strength}")
    pixels, names = read_images(args.image)
    folder_in = Path(args.image).is_dir()
    out = Path(args.out)
    if not folder_in and (out.is_dir() or out.suffix.lower() != ".png"):
        raise UsageError(f"--out {out}: give a file name ending in .png")
    if folder_in and (out.exists() and not out.is_dir() or out.suffix):
        raise UsageError(f"--out {out}: for a folder of images give a folder name")
    options = {}
    if args.task == "inpaint":
        masks, _ = read_images(args.mask)
        if len(masks) not in (1, len(pixels)):
            raise UsageError(f"--mask {args.mask}: {len(masks)} masks for {len(pixels)} images")
        options["mask"] = torch.from_numpy(masks).amax(1, keepdim=True) > 127
    elif args.task == "upscale":
        options["factor"] = args.factor
    elif args.task == "denoise":
        options["sigma"] = args.sigma
    elif args.task == "deblur":
        options["kernel"] = args.kernel
    model = load(args.checkpoint)
    started = time.perf_counter()
    images = torch.from_numpy(pixels).float() / 255
    restored = model.restore(images, args.task, method=getattr(args, "method", None),
                             steps=args.steps, seed=args.seed, class_label=args.class_label,
                             strength=strength, **options)
    paths = [out / name for name in names] if folder_in else [out]
    for image, path in zip(restored, paths):
        save_image(image, path.with_suffix(".png"))
    print(f"{len(restored)} image(s) restored in {time.perf_counter() - started:.1f} s: "
          f"{paths[0].with_suffix('.png') if not folder_in else out}")
    return 0


def cmd_schedule(args) -> int:
    from difflab.runs import load

    if not 1 <= args.steps <= 100 or not 2 <= args.n <= 4096 or not 0 <= args.seed < 2**63:
        raise UsageError(f"--steps must be in [1, 100], --n in [2, 4096], --seed >= 0; got "
                         f"{args.steps}, {args.n}, {args.seed}")
    model = load(args.checkpoint)
    sampler = args.sampler or model.config.sample.sampler
    started = time.perf_counter()
    sigmas = model.optimize_schedule(sampler, args.steps, args.n, args.seed)
    print(f"{sampler}, {args.steps} steps, optimized on {args.n} trajectories in "
          f"{time.perf_counter() - started:.1f} s: "
          f"{' '.join(f'{s:.4g}' for s in sigmas.tolist())}")
    print(f"saved in {Path(args.checkpoint) / 'schedules.json'}; use: difflab sample "
          f"{args.checkpoint} --sampler {sampler} --steps {args.steps} --grid optimized")
    return 0


def cmd_bench(args) -> int:
    """``difflab bench optimizers``."""
    from difflab.bench import run_benchmark

    if args.report_only:
        from difflab.bench.report import write_report

        print(write_report(Path(args.out) / "results.jsonl", args.out))
        return 0
    command = "difflab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_benchmark(args.problem, args.budget, args.out, executor=args.executor,
                  data_dir=args.data_dir, workers=args.workers, ray_address=args.ray_address,
                  threads=args.threads, command=command)
    return 0


def one_line_warnings(default, message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` for the CLI: our own warnings (e.g. a skipped line of a bench
    results file) as one line ``difflab: warning: ...``; others through ``default``."""
    from difflab.bench.executors import RecordWarning

    if issubclass(category, RecordWarning):
        print(f"difflab: warning: {message}", file=sys.stderr)
    else:
        default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    from difflab.training.train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(one_line_warnings, warnings.showwarning)
            return int(args.func(args) or 0)
    except (ValueError, TrainingError) as e:  # our errors: config, data, checkpoint, metrics
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"difflab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("difflab: error: out of memory (lower --n, --batch-size or optim.batch_size)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
