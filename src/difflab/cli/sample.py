"""``difflab sample``, ``difflab eval`` and ``difflab schedule``: commands over a trained run
(``difflab.runs``) or sample files (``difflab.evaluation.evaluate``)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from difflab.cli.args import UsageError, check_sampling_args, check_steps_and_seed
from difflab.files import write_atomic
from difflab.options import check_steps


def add_sample_parser(sub) -> None:
    from difflab.options import GRIDS, SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Sample a trained run and write a PNG grid (and .npz). "
                       "Sampler, steps, grid and guidance default to the run's recipe.")
    p.add_argument("checkpoint", help="run directory or its checkpoint.json")
    p.add_argument("--num-samples", "--n", dest="n", type=int, default=64,
                   help="number of samples (default 64); --n for short, except under torchrun, "
                   "whose own parser takes --n for a prefix of its options")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's)")
    p.add_argument("--grid", choices=["auto", "optimized", *GRIDS], help="sigma grid (default: "
                   "the run's); optimized: the grid difflab schedule made for this sampler and "
                   "steps; auto: that grid if made, else log-SNR with a final Tweedie step at "
                   "<= 10 evaluations, else the model's")
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
    from difflab.options import REFERENCES

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


def cmd_sample(args) -> int:
    check_sampling_args(args)
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError(f"--eta must be in [0, 1], got {args.eta}")
    from difflab.diffusion.generation import check_class_label
    from difflab.evaluation.report import save_grid, save_npz
    from difflab.runs import load

    model = load(args.checkpoint, device=args.device, precision=args.precision)
    sampler = args.sampler or model.config.sample.sampler
    if args.eta is not None and sampler != "ddim":
        raise UsageError(f"--eta applies only to --sampler ddim, not {sampler}")
    check_class_label(args.class_label, model.shape.num_classes, "--class-label")
    options = {"eta": args.eta} if args.eta is not None else {}
    # under torchrun each rank draws a contiguous range of sample indices; rank 0 gathers them
    # in order and writes (sample i is the same whichever rank draws it: generation.generate)
    import torch

    from difflab.training import distributed

    model.denoiser.to(distributed.init(model.device))
    start, count = distributed.shard(args.n, args.batch_size)  # whole batches: bit-exact
    started = time.perf_counter()
    from difflab.progress import Progress

    progress = Progress(count, None, label="sample", unit="image", every_percent=10) \
        if distributed.is_main() else None  # rank 0's share stands for all
    part = model.generate(count, args.steps, args.sampler, args.guidance, args.seed,
                          grid=args.grid, class_label=args.class_label,
                          batch_size=args.batch_size, start=start,
                          progress=progress and progress.update, **options) if count else \
        torch.empty((0, *model.shape.item), device=model.device)
    if progress is not None:
        progress.close()
    images = distributed.gather(part, args.n, args.batch_size)
    if images is None:  # ranks > 0: rank 0 writes
        return 0
    recipe = model.config.sample
    print(f"{args.n} samples in {time.perf_counter() - started:.1f} s ({sampler}, "
          f"{args.steps or recipe.steps} steps, guidance "
          f"{recipe.guidance if args.guidance is None else args.guidance:g}, {model.precision})")
    print(f"grid: {save_grid(images[:256], args.out)}")
    if args.npz:
        print(f"samples: {save_npz(images, args.npz)}")
    return 0


def cmd_eval(args) -> int:
    check_sampling_args(args)
    if args.nll_n < 1 or args.nll_steps < 1:
        raise UsageError(f"--nll-n and --nll-steps must be at least 1, got {args.nll_n} and "
                         f"{args.nll_steps}")
    check_steps(args.nll_steps, "--nll-steps")  # at most options.MAX_STEPS RK4 steps too
    if not args.nll and args.n is not None and args.n < 2:
        raise UsageError(f"--n must be at least 2 (FID needs a covariance), got {args.n}")
    from difflab.evaluation import evaluate as ev
    from difflab.evaluation.metrics import MetricsError

    dataset, split = ev.parse_reference(args.ref)
    if args.nll:
        return eval_nll(args, ev.load_split(dataset, split, args.data_dir))
    if args.samples is None:
        for _, e in ev.extractors_for(dataset, args.inception_weights):
            floor_n = max(ev.FLOOR_POOL, args.n or 1000)
            for ref, first, feats in (
                    (args.ref, None, ev.reference_features(args.ref, e, args.data_dir, True)[0]),
                    (ev.floor_reference(args.ref), floor_n,
                     ev.floor_features(args.ref, e, args.n or 1000, args.data_dir, True)[0])):
                print(f"{ref}: {len(feats)} images, {feats.shape[1]}-d {e.name} features cached in "
                      f"{ev.cache_path(ref, e, first)}")
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
        from difflab.progress import Progress

        progress = Progress(n, None, label="sample", unit="image", every_percent=10)
        images = model.generate(n, args.steps, args.sampler, args.guidance, args.seed,
                                progress=progress.update).cpu()
        progress.close()
    else:
        images = ev.load_samples(path, dataset, args.n)
    result = ev.evaluate_images(images, args.ref, args.data_dir, args.inception_weights,
                                args.seed, verbose=True)
    print(ev.format_result(result, args.samples))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
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
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_schedule(args) -> int:
    check_steps_and_seed(args.steps, args.seed, max_steps=100)
    if not 2 <= args.n <= 4096:
        raise UsageError(f"--n must be in [2, 4096], got {args.n}")
    from difflab.runs import load

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
