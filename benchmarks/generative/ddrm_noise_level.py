"""Why deepinv's DDRM scores a higher PSNR than difflab's with the same network: one run, four
DDRMs on the same images and measurements (restoration_quality's tasks), side by side:

- difflab's DDRM (Kawar et al. 2022, eqs. 7-8), the denoiser told the grid's sigma;
- the same solver with the denoiser told sqrt(2) sigma: the noise level deepinv's DDRM states
  to the network while its state carries sigma / sqrt(2) (BENCHMARKS.md, MNIST restoration,
  "at least as good as deepinv's implementation");
- the same solver with every fresh noise draw scaled by 1 / sqrt(2), the denoiser told the grid's
  sigma: deepinv's DDRM as written (it draws ``std * randn / sqrt(2)`` where eqs. 7-8 draw
  ``std * randn``). On noiseless tasks it tells the network the same sqrt(2) times the state's
  noise as the row above (on levels 1 / sqrt(2) as large); on noisy tasks the state also carries
  y's noise, which is not scaled, so the factor falls from sqrt(2) (sigma >> sigma_y) to 1
  (sigma = sigma_y), which the row above does not emulate;
- deepinv's DDRM (``deepinv.sampling.DDRM``) driven by the same network.

If a row reproduces deepinv's, its change is the whole difference on that task. PSNR, SSIM
(scikit-image) and FID with difflab's features against the test split.

    python benchmarks/generative/ddrm_noise_level.py RUN --data cifar10 --first 5000 --n 200
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restoration_quality as rq  # noqa: E402

from difflab.data import load_pixels  # noqa: E402
from difflab.restoration import solvers  # noqa: E402
from difflab.runs import load  # noqa: E402


class ToldSqrt2(rq.SharedNet):
    """The run's denoiser, told sqrt(2) times the noise level it is given."""

    def __call__(self, x, sigma, cond=None):
        return super().__call__(x, sigma * math.sqrt(2), cond)


@contextlib.contextmanager
def fresh_noise_scaled(factor: float):
    """Within the block, every noise draw of difflab's solvers is ``factor`` times a standard
    normal one (the solvers draw through ``solvers.noise_like``)."""
    draw = solvers.noise_like
    solvers.noise_like = lambda x, generator: draw(x, generator) * factor
    try:
        yield
    finally:
        solvers.noise_like = draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained run directory of the --data set")
    parser.add_argument("--data", choices=tuple(rq.SHAPES), default="mnist")
    parser.add_argument("--first", type=int, default=5000, help="first test image")
    parser.add_argument("--n", type=int, default=200, help="test images")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--tasks", nargs="*", choices=rq.TASKS, default=None,
                        help="default: the data set's")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.n < 2 or args.first < 0 or args.nfe < 1 or args.batch < 1:
        parser.error("--n must be at least 2, --first at least 0, --nfe and --batch at least 1")
    torch.set_num_threads(1)
    try:
        model = load(args.run)
    except ValueError as e:  # not a run, or a damaged one: one line, exit 2
        parser.error(str(e))
    net, told = rq.SharedNet(model), ToldSqrt2(model)
    arms = {"difflab DDRM": ("difflab DDRM", net, 1.0),  # label: (method, network, noise factor)
            "difflab DDRM, told sqrt(2) sigma": ("difflab DDRM", told, 1.0),
            "difflab DDRM, fresh noise / sqrt(2)": ("difflab DDRM", net, 1 / math.sqrt(2)),
            "deepinv DDRM": ("deepinv DDRM", net, 1.0)}
    pixels, _ = load_pixels(args.data, args.data_dir, "test")
    x01 = torch.from_numpy(np.asarray(pixels[args.first:args.first + args.n])).float() / 255
    if len(x01) < args.n:
        parser.error(f"--first {args.first} --n {args.n}: the test split has {len(pixels)} images")
    print(f"{args.run}: test images {args.first}-{args.first + args.n - 1}, {args.nfe} NFE\n")
    print("| task | method | PSNR | SSIM | FID |\n|---|---|---:|---:|---:|")
    for name in args.tasks or rq.DATA_TASKS[args.data]:
        task = rq.make_task(name, x01, 0)
        for label, (method, network, factor) in arms.items():
            with fresh_noise_scaled(factor):
                images = torch.cat([rq.run_diffusion(method,
                                                     rq.subset(task, slice(b, b + args.batch)),
                                                     network, args.nfe, 0)
                                    for b in range(0, len(x01), args.batch)])
            row = rq.score(images, task, args.data_dir, data=args.data)
            print(f"| {name} | {label} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
                  f"{row['fid']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
