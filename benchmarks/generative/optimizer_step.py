"""AdamW's kernels on the main recipe's U-Net on CPU (one thread unless ``--threads``): torch's
per-tensor loop (its default on CPU), ``foreach`` and ``fused`` (``train.make_optimizer``'s pick
on CPU and CUDA).
Times the optimizer step alone and the whole training step (``train.optimization_step``: loss,
backward, clipping, optimizer) on MNIST batches, the kinds interleaved in blocks so that machine
load hits all alike; prints medians and each kind's ratio to the loop with a 95% bootstrap CI.
Also checks that the three kinds take the same step (largest parameter difference after a few
steps from the same start).

    python benchmarks/generative/optimizer_step.py --blocks 6 --steps 5
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6, help="interleaved blocks per kind")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the main job uses all)")
    args = parser.parse_args()
    if min(args.blocks, args.steps, args.batch, args.threads) < 1:
        parser.error("--blocks, --steps, --batch and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    from difflab.bench.stats import bootstrap_ci
    from difflab.config import TrainConfig, validate
    from difflab.device import resolve_precision
    from difflab.diffusion.denoiser import build_denoiser
    from difflab.training.train import batch_share, optimization_step, prepare

    cpu = torch.device("cpu")
    data, shape, config = prepare(validate(TrainConfig()))
    precision = resolve_precision(config.run.precision, cpu)[0]
    torch.manual_seed(0)
    start = build_denoiser(config, shape)
    o = config.optim
    runs = {}
    for kind, options in KINDS.items():  # one network and optimizer per kind, the same start
        denoiser = copy.deepcopy(start)
        runs[kind] = (denoiser, torch.optim.AdamW(denoiser.net.parameters(), lr=o.lr, betas=o.betas,
                                                  weight_decay=o.weight_decay, **options))
    print(f"{sum(p.numel() for p in start.net.parameters()):,} parameters in "
          f"{len(list(start.net.parameters()))} tensors; precision {precision}; batch {args.batch}; "
          f"{args.threads} thread(s)")

    for kind, (denoiser, opt) in runs.items():  # the same 3 steps on the same batches
        for i in range(3):
            optimization_step(denoiser, denoiser.net, opt, config,
                              batch_share(data, config, None, i, 0, args.batch), cpu, precision)
    reference = [p.detach() for p in runs["loop"][0].net.parameters()]
    for kind in ("foreach", "fused"):
        gap = max(float((a - b.detach()).abs().max())
                  for a, b in zip(reference, runs[kind][0].net.parameters()))
        print(f"{kind} vs loop after 3 steps: largest parameter difference {gap:.1e}")

    step_times = {kind: [] for kind in KINDS}
    opt_times = {kind: [] for kind in KINDS}
    for block in range(args.blocks):
        order = list(KINDS)[block % 3:] + list(KINDS)[:block % 3]
        for kind in order:
            denoiser, opt = runs[kind]
            for i in range(args.steps):
                batch = batch_share(data, config, None, 10 + block * args.steps + i, 0, args.batch)
                started = time.perf_counter()
                optimization_step(denoiser, denoiser.net, opt, config, batch, cpu, precision)
                step_times[kind].append(time.perf_counter() - started)
                started = time.perf_counter()
                opt.step()  # the optimizer alone, on the gradients just used
                opt_times[kind].append(time.perf_counter() - started)
    loop_opt, loop_step = np.asarray(opt_times["loop"]), np.asarray(step_times["loop"])
    for kind in KINDS:
        line = (f"{kind:8s} optimizer step {1000 * np.median(opt_times[kind]):6.2f} ms, "
                f"training step {1000 * np.median(step_times[kind]):7.1f} ms")
        if kind != "loop":
            for name, ours, base in (("optimizer", opt_times[kind], loop_opt),
                                     ("training step", step_times[kind], loop_step)):
                ratios = base / np.asarray(ours)  # paired by position: same block, same batch
                low, high = bootstrap_ci(ratios, np.median)
                line += f"; {name} {np.median(ratios):.2f}x the loop's speed ({low:.2f}-{high:.2f})"
        print(line)


if __name__ == "__main__":
    main()
