"""Posterior-mean estimators on held-out test images: K draws x S steps, independent or antithetic.

Half-image box inpainting (``restoration_quality``'s ``inpaint-box``) of test images FIRST ..
FIRST + N - 1 (held out from the 1,000-image benchmark, which uses the first 1,000), restored by
the mean of K DDNM draws of S steps each (``restore_mean``), for each ``MODE:KxS`` given, MODE
``plain`` (independent draws) or ``anti`` (antithetic pairs, ``restore_mean``'s default). Prints
PSNR and SSIM per configuration with the paired difference to scikit-image's biharmonic fill and
its 95% interval (1.96 standard errors over images). One DDNM generator seed for every
configuration; the measurement is noiseless, so it has no seed.

Run:  python benchmarks/generative/posterior_mean_split.py RUN --data cifar10 --first 5000 --n 100
          --configs plain:10x10 anti:10x10 anti:4x25 anti:2x50 plain:2x50 [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import difflab  # noqa: E402
import restoration_peers as peers  # noqa: E402
from difflab.data import load_pixels  # noqa: E402
from difflab.diffusion.generation import model_sigmas  # noqa: E402
from difflab.restoration import restore_ddnm, restore_mean  # noqa: E402
from restoration_quality import SharedNet, make_task, psnr, ssim  # noqa: E402
from restoration_report import mean_interval  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--data", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--first", type=int, default=5000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["plain:10x10", "anti:10x10", "anti:2x50"])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    configs = []
    for text in args.configs:
        mode, _, split = text.partition(":")
        draws, _, steps = split.partition("x")
        if mode not in ("plain", "anti") or not (draws.isdigit() and steps.isdigit()) \
                or int(draws) < 1 or int(steps) < 1:
            parser.error(f"--configs {text!r}: expected plain:KxS or anti:KxS with K, S >= 1, "
                         "e.g. anti:2x50")
        configs.append((text, mode == "anti", int(draws), int(steps)))
    torch.set_num_threads(args.threads)
    net = SharedNet(difflab.load(args.run))
    pixels = load_pixels(args.data, args.data_dir, "test")[0][args.first:args.first + args.n]
    if len(pixels) < 2:
        parser.error(f"--first {args.first} --n {args.n}: {len(pixels)} {args.data} test image(s) "
                     "there; the intervals need at least 2")
    x01 = torch.from_numpy(pixels).float() / 255
    x01 = x01[:, None] if x01.dim() == 3 else x01
    task = make_task("inpaint-box", x01, seed=0)
    base_p, base_s = [f(peers.inpaint_biharmonic(task.y01, task.known).clamp(0, 1), x01)
                      for f in (psnr, ssim)]
    print(f"{args.data} test images {args.first}-{args.first + len(x01) - 1}: biharmonic PSNR "
          f"{base_p.mean():.3f} SSIM {base_s.mean():.4f}", flush=True)
    for text, antithetic, draws, steps in configs:
        started = time.perf_counter()
        net.reset()
        x = restore_mean(restore_ddnm, draws, net, task.y_pm, task.operator,
                         model_sigmas(net, steps), generator=torch.Generator().manual_seed(args.seed),
                         antithetic=antithetic)
        out01 = ((x.clamp(-1, 1) + 1) / 2).float()
        p, s = psnr(out01, x01), ssim(out01, x01)
        print(f"{text:<12} NFE {net.calls:>4}  PSNR {p.mean():.3f} ({mean_interval(p - base_p, 3)})  "
              f"SSIM {s.mean():.4f} ({mean_interval(s - base_s, 4)})  "
              f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
