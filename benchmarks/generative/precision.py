"""Training-step time of the default MNIST U-Net in fp32 and under bf16 autocast, on this CPU.

One step = forward + weighted denoising loss (log-normal sigmas) + backward + AdamW step, batch
64, ``TrainConfig()`` defaults, class-conditional MNIST shape ``DataShape(1, (28, 28), 10)``.
The two precisions run interleaved in one process (``difflab.timing``: each repeat times a block
of steps of each, the first repeat is a discarded warm-up), so machine load hits both alike.
A third arm runs what ``run.precision=auto`` (the default) picks here. Prints the median seconds
per step of each and its time ratio to fp32 (median over repeats of the per-repeat ratio, 95%
bootstrap CI; < 1: faster than fp32) and what auto picks here and why
(``difflab.device.resolve_precision``).

    python benchmarks/generative/precision.py [--threads 1] [--repeats 5] [--block 1]

On a CPU without native bf16, or with it masked, bf16 is emulated and far slower; keep the
repeats small there:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/generative/precision.py
"""
from __future__ import annotations

import argparse
import os

import torch

from difflab.config import TrainConfig
from difflab.data.shape import DataShape
from difflab.device import autocast, resolve_precision
from difflab.diffusion.denoiser import build_denoiser
from difflab.diffusion.loss import denoising_loss
from difflab.diffusion.schedules import sample_training_sigma
from difflab.timing import interleave, summarise
from difflab.training.train import make_optimizer

CPU = torch.device("cpu")
SHAPE = DataShape(1, (28, 28), 10)


def training_step(precision: str, batch: int):
    """A closure running one training step of a fresh default U-Net in ``precision``."""
    config = TrainConfig()
    d = config.diffusion
    torch.manual_seed(0)
    denoiser = build_denoiser(config, SHAPE).train()
    opt = make_optimizer(denoiser.net, config, CPU)  # training's AdamW
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, *SHAPE.item, generator=g) * 2 - 1
    labels = torch.randint(0, SHAPE.num_classes, (batch,), generator=g)

    def step():
        sigma = sample_training_sigma("lognormal", batch, g, p_mean=d.p_mean, p_std=d.p_std)
        noise = torch.randn(x0.shape, generator=g)
        with autocast(CPU, precision):
            loss = denoising_loss(denoiser, x0, sigma, noise, labels, d.weighting, d.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in denoiser.net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (+1 warm-up)")
    parser.add_argument("--block", type=int, default=1, help="steps of each precision per repeat")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arms", default="fp32,bf16,auto",
                        help="which of fp32, bf16, auto to time (fp32 is always the reference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    chosen, why = resolve_precision("auto", CPU)
    env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    fp32, n_params = training_step("fp32", args.batch)
    bf16, _ = training_step("bf16", args.batch)
    auto, _ = training_step(chosen, args.batch)  # what the default `difflab train` runs
    print(f"torch {torch.__version__}, {args.threads} thread(s), ATen CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}"
          + (f", {' '.join(f'{k}={v}' for k, v in env.items())}" if env else ""))
    print(f"default U-Net {n_params:,} parameters, batch {args.batch}, "
          f"{args.repeats} repeats x {args.block} step(s) of each precision (+1 warm-up repeat)")
    wanted = {a.strip() for a in args.arms.split(",")} | {"fp32"}
    arms = {name: fn for name, fn in (("fp32", fp32), ("bf16", bf16), (f"auto ({chosen})", auto))
            if name.split()[0] in wanted}
    summary = summarise(interleave(arms, args.repeats, args.block), "fp32")
    for name, s in summary.items():
        lo, hi = s["ratio_ci"]
        print(f"{name:12s} {s['seconds']:.3f} s per step ({args.batch / s['seconds']:5.1f} img/s), "
              f"time / fp32 {s['ratio']:.2f} [95% CI {lo:.2f}, {hi:.2f}]")
    print(f'run.precision=auto picks {chosen} here: {why.removeprefix("auto: ")}')


if __name__ == "__main__":
    main()
