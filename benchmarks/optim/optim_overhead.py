"""Cost of Langevin.step() relative to torch.optim.SGD(momentum=0.9) on the CIFAR-10 CNN's
parameters (62,006), both in the same implementation mode (foreach, then for-loop).

Both sides run interleaved in one process (blocks of steps, alternating), so machine load hits
both alike; the ratio is the median over repeats of (block time / SGD block time), with a 95%
bootstrap CI. Also times the noise draw alone over a flat buffer of all parameters, with
difflab's counter-based stream (the default noise source) and with torch's ``normal_`` (MT19937,
what ``Langevin(generator=torch.Generator())`` uses), and whether the compiled kernel is loaded.

    python benchmarks/optim/optim_overhead.py [--repeats 30] [--block 200] [--model unet]

``--model unet`` times the steps on the parameters of difflab's MNIST U-Net (1.2M parameters,
many tensors) instead, where SGD's memory-bound passes are relatively cheaper than the noise
(no whole-training-step row there).
"""
from __future__ import annotations

import argparse

import torch

from difflab.bench.problems import build_model
from difflab.data.shape import DataShape
from difflab.nets.unet import UNet, UNetConfig
from difflab.optim import Langevin
from difflab.optim.normal import NormalStream, kernel_available
from difflab.timing import interleave, summarise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--block", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=("cifar10-cnn", "unet"), default="cifar10-cnn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_train = 45000
    def build(name):
        if name == "cifar10-cnn":
            return build_model(name)
        return UNet(UNetConfig(), DataShape(1, (28, 28)))  # unconditional, as before the split

    n_params = sum(p.numel() for p in build(args.model).parameters())
    print(f"torch {torch.__version__}, {args.threads} thread(s), repeats {args.repeats} x "
          f"block {args.block} steps, compiled noise kernel: {kernel_available()}, "
          f"{args.model} parameters: {n_params}")
    for foreach in (True, False):
        def make(kind):
            torch.manual_seed(0)
            model = build(args.model)
            params = list(model.parameters())
            g = torch.Generator().manual_seed(1)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g) * 1e-3
            if kind == "SGD(momentum=0.9)":
                return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
            if kind == "SGD()":
                return torch.optim.SGD(params, lr=0.01, foreach=foreach)
            if kind == "Langevin(T=0)":
                return Langevin(params, lr=0.01, temperature=0.0, foreach=foreach, seed=0)
            if kind == "Langevin(langevin)":
                return Langevin(params, lr=0.01, temperature=1 / n_train, foreach=foreach, seed=0)
            if kind == "Langevin(constant)":
                return Langevin(params, lr=0.01, temperature=1e-4, noise="constant",
                                foreach=foreach, seed=0)
            if kind == "Langevin(langevin, momentum=0.9)":
                return Langevin(params, lr=0.01, temperature=1 / n_train, momentum=0.9,
                                foreach=foreach, seed=0)
            if kind == "Langevin(langevin, torch.Generator)":
                return Langevin(params, lr=0.01, temperature=1 / n_train, foreach=foreach,
                                generator=torch.Generator().manual_seed(0))
            if kind == "Langevin(langevin, rmsprop)":
                return Langevin(params, lr=0.01, temperature=1 / n_train,
                                preconditioner="rmsprop", foreach=foreach, seed=0)
            raise ValueError(kind)

        kinds = ["SGD(momentum=0.9)", "SGD()", "Langevin(T=0)", "Langevin(langevin)",
                 "Langevin(constant)", "Langevin(langevin, momentum=0.9)",
                 "Langevin(langevin, rmsprop)", "Langevin(langevin, torch.Generator)"]
        opts = {k: make(k) for k in kinds}
        flat = torch.empty(n_params)
        gen = torch.Generator().manual_seed(0)
        stream = NormalStream(0)
        calls = {k: opt.step for k, opt in opts.items()}
        calls["noise draw only: difflab stream"] = lambda: stream.normal_(flat)
        calls["noise draw only: torch normal_"] = lambda: flat.normal_(generator=gen)
        summary = summarise(interleave(calls, args.repeats, args.block), "SGD(momentum=0.9)")
        print(f"\nmode: {'foreach' if foreach else 'for-loop'}")
        print(f"{'optimizer':38s} {'median us':>10s} {'ratio':>7s}  95% CI")
        for k, s in summary.items():
            lo, hi = s["ratio_ci"]
            print(f"{k:38s} {1e6 * s['seconds']:10.1f} {s['ratio']:7.2f}  [{lo:.2f}, {hi:.2f}]")
        if args.model == "cifar10-cnn":
            whole_step(args, foreach, gen, n_train)


def whole_step(args, foreach: bool, gen: torch.Generator, n_train: int) -> None:
    """Whole training step (forward + backward + step, batch 128) for the two headline arms."""
    opts = {}
    kinds = ("SGD(momentum=0.9)", "Langevin(langevin)")
    xb = torch.randn(128, 3, 32, 32, generator=gen)
    yb = torch.randint(0, 10, (128,), generator=gen)
    models = {}
    for k in kinds:
        torch.manual_seed(0)
        models[k] = build_model("cifar10-cnn")
        opts[k] = (torch.optim.SGD(models[k].parameters(), lr=0.01, momentum=0.9,
                                   foreach=foreach) if k.startswith("SGD") else
                   Langevin(models[k].parameters(), lr=0.01, temperature=1 / n_train,
                            foreach=foreach, seed=0))

    def train_step(k):
        def step():
            opts[k].zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(models[k](xb), yb).backward()
            opts[k].step()
        return step

    whole = summarise(interleave({k: train_step(k) for k in kinds},
                                 max(1, args.repeats // 3), 10),
                      "SGD(momentum=0.9)")
    sgd, langevin = whole["SGD(momentum=0.9)"], whole["Langevin(langevin)"]
    lo, hi = langevin["ratio_ci"]
    print(f"whole training step (fwd+bwd+step, batch 128): SGD(momentum=0.9) "
          f"{1e3 * sgd['seconds']:.2f} ms, Langevin(langevin) "
          f"{1e3 * langevin['seconds']:.2f} ms, ratio {langevin['ratio']:.3f} "
          f"[{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
