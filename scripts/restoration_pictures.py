"""The README's before/after restoration pictures: one test image per task, restored by a trained
run through the Python API with each command's default settings (its default solver, DDNM or
DDRM, 50 steps, seed 0, unconditional), written as one PNG row of (input, output) pairs enlarged
for viewing.

    python scripts/restoration_pictures.py runs/mnist --data mnist --index 0 --out docs/restoration-mnist.png
    python scripts/restoration_pictures.py runs/cifar10 --data cifar10 --index 7 --out docs/restoration-cifar10.png

Inputs are made from the clean test image the way a user's file would look: inpaint keeps the
left half (mask white there), upscale gives the image average-pooled by 2 (MNIST) or 4 (CIFAR-10),
denoise adds noise of std 0.2, deblur blurs with the Gaussian of std 1 (circular, as the operator),
colorize (colour runs) gives the channel mean, edit takes a horizontally flipped copy at
strength 0.5. Every input is rounded to 8 bits, as a PNG would be.
"""
from __future__ import annotations

import argparse
import time

import torch

import difflab
from difflab.data import load_pixels
from difflab.evaluation.report import save_grid
from difflab.restoration import Blur, Downsample, Grayscale


def inputs(x: torch.Tensor, factor: int) -> dict:
    """Task -> (input image [1, C', H', W'] in [0, 1], options) made from the clean image x."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, *x.shape[-2:], dtype=torch.bool)
    mask[..., : x.shape[-1] // 2] = True
    out = {"inpaint": (x * mask, {"mask": mask}),
           "upscale": (Downsample(factor).A(x), {"factor": factor}),
           "denoise": (x + 0.2 * torch.randn(x.shape, generator=g), {"sigma": 0.2}),
           "deblur": (Blur(std=1.0).A(x), {"kernel": "gaussian:1.0"})}
    if x.shape[1] == 3:
        out["colorize"] = (Grayscale(3).A(x), {})
    out["edit"] = (x.flip(-1), {"strength": 0.5})
    return {task: ((image.clamp(0, 1) * 255).round() / 255, options)
            for task, (image, options) in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--data", choices=["mnist", "cifar10"], default="mnist")
    parser.add_argument("--index", type=int, default=0, help="test image")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args()
    model = difflab.load(args.run)
    pixels = load_pixels(args.data, args.data_dir, "test")[0][args.index:args.index + 1]
    x = torch.from_numpy(pixels).float() / 255
    size = x.shape[-1]
    tiles = []
    for task, (image, options) in inputs(x, 2 if size == 28 else 4).items():
        started = time.perf_counter()
        restored = getattr(model, task)(image, **options)
        print(f"{task}: {time.perf_counter() - started:.1f} s")
        shown = image.expand(-1, x.shape[1], -1, -1)  # gray inputs of a colour run, as gray
        if shown.shape[-1] != size:  # the small image of upscale, enlarged (nearest)
            shown = torch.nn.functional.interpolate(shown, size=(size, size), mode="nearest")
        tiles += [shown[0], restored[0]]
    grid = torch.stack(tiles) * 2 - 1
    save_grid(grid, args.out, columns=len(tiles), scale=max(1, 96 // size))
    print(args.out)


if __name__ == "__main__":
    main()
