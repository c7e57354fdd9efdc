"""Command line: ``difflab SUBCOMMAND ...`` (also ``python -m difflab``).

Each subcommand parses its arguments here and calls one function of the module that does the
work. Expected failures (bad input, missing files) print one line ``difflab: error: ...`` and exit
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys

from difflab.data import DATASETS, DataError


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a diffusion model (default: the MNIST recipe)",
                       description="Train a U-Net denoiser, then sample it and write report.md "
                       "in the run directory.")
    p.add_argument("--data", choices=DATASETS, help="data set (default mnist)")
    p.add_argument("--data-dir", help="folder with the data files (else $DIFFLAB_DATA, else "
                   "~/.cache/difflab/data)")
    p.add_argument("--folder", help="image folder for --data folder")
    p.add_argument("--out", help="run directory (default runs/mnist)")
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--minutes", type=float, help="stop after this much training time "
                   "(default 8.5; with --steps alone, no time limit)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--unconditional", dest="class_conditional", action="store_false",
                   default=None, help="ignore labels (default: class-conditional training with "
                   "label dropout, sampled with classifier-free guidance)")
    p.add_argument("--class-conditional", dest="class_conditional", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None,
                   help="train in float32 instead of bf16 autocast")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--final-samples", type=int, help="samples saved to samples.npz at the end")
    p.add_argument("--eval-every", type=int, help="log FID/KID (difflab features, test split) "
                   "every K steps (default 0: off)")
    p.add_argument("--eval-n", type=int, help="samples per evaluation (default 1000)")
    p.add_argument("--config", help="TOML or JSON file of config sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.set_defaults(func=cmd_train)

    from difflab.diffusion.samplers import SAMPLERS
    from difflab.diffusion.schedules import GRIDS

    p = sub.add_parser("sample", help="draw samples from a checkpoint",
                       description="Sample a trained model and write a PNG grid (and .npz).")
    p.add_argument("checkpoint", help="run directory or its checkpoint.json")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument("--sampler", default="ddim", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--grid", choices=GRIDS, help="sigma grid (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity (0 deterministic, 1 DDPM)")
    p.add_argument("--class-label", type=int, help="class to draw (conditional models)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png", help="PNG grid path (default grid.png)")
    p.add_argument("--npz", help="also save all samples in [0, 1] to this .npz")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=True)
    p.set_defaults(func=cmd_sample)

    from difflab.bench import add_bench_parser
    add_bench_parser(sub)

    from difflab.evaluation.evaluate import add_eval_parser
    add_eval_parser(sub)
    return parser


def cmd_train(args) -> int:
    from difflab.config import TrainConfig, load_file, parse_overrides, update, validate
    from difflab.training.train import finish_run, train

    config = TrainConfig()
    if args.config:
        update(config, load_file(args.config))
    flags = {"data": {"dataset": args.data, "data_dir": args.data_dir, "folder": args.folder,
                      "class_conditional": args.class_conditional},
             "optim": {"batch_size": args.batch_size},
             "run": {"out": args.out, "steps": args.steps, "minutes": args.minutes,
                     "seed": args.seed, "bf16": args.bf16, "threads": args.threads,
                     "final_samples": args.final_samples, "eval_every": args.eval_every,
                     "eval_n": args.eval_n}}
    update(config, {s: {k: v for k, v in f.items() if v is not None} for s, f in flags.items()})
    if args.steps is not None and args.minutes is None:
        config.run.minutes = None  # --steps alone means "exactly this many steps"
    update(config, parse_overrides(args.set))
    validate(config)
    run_dir = train(config, resume=args.resume)
    report = finish_run(run_dir)
    print(f"report: {report}")
    print(f"samples: {run_dir / 'samples.png'}")
    return 0


def cmd_sample(args) -> int:
    import time

    import torch

    from difflab.training.checkpoint import load_denoiser
    from difflab.evaluation.report import save_grid, save_npz
    from difflab.diffusion.samplers import get_sampler, sample

    get_sampler(args.sampler)
    for name, value, low in (("--n", args.n, 1), ("--steps", args.steps, 1),
                             ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {args.eta}")
    if args.eta is not None and args.sampler != "ddim":
        raise UsageError(f"--eta applies only to --sampler ddim, not {args.sampler}")
    denoiser, config = load_denoiser(args.checkpoint)
    classes = config.unet.num_classes
    if args.class_label is not None and not 0 <= args.class_label < max(classes, 1):
        raise UsageError(f"--class-label {args.class_label}: the model has "
                         f"{classes or 'no'} classes")
    options = {"eta": args.eta} if args.eta is not None else {}
    generator = torch.Generator().manual_seed(args.seed)
    shape = (config.unet.in_channels, config.unet.image_size, config.unet.image_size)
    started, chunks = time.perf_counter(), []
    for start in range(0, args.n, args.batch_size):
        count = min(args.batch_size, args.n - start)
        cond = None
        if classes:
            cond = (torch.full((count,), args.class_label) if args.class_label is not None
                    else torch.arange(start, start + count) % classes)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            chunks.append(sample(denoiser, (count, *shape), args.sampler, args.steps, args.grid,
                                 cond=cond, generator=generator, guidance_scale=args.guidance,
                                 **options).float())
    images = torch.cat(chunks).clamp(-1, 1)
    print(f"{args.n} samples in {time.perf_counter() - started:.1f} s")
    print(f"grid: {save_grid(images[:256], args.out)}")
    if args.npz:
        print(f"samples: {save_npz(images, args.npz)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, UsageError, ValueError, FileNotFoundError) as e:
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
