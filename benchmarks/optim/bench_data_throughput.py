"""One training epoch of the CIFAR-10 CNN over 45,000 images, as difflab.bench runs it (resident
standardized tensor, per-epoch permutation, gather of each mini-batch, forward, backward, SGD
step, loss.item()), against pure compute: forward+backward on one resident batch.

The two are interleaved in blocks of steps in one process, so machine load hits both alike.
Acceptance: epoch time <= 2x pure compute.

    python benchmarks/optim/bench_data_throughput.py [--data-dir ../shared/data] [--block 16]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from difflab.bench.problems import load_problem
from difflab.bench.runner import train_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    p = load_problem("cifar10-cnn", args.data_dir)
    print(f"loaded {p.n_train} train images as one tensor {tuple(p.train_x.shape)} in "
          f"{time.perf_counter() - t0:.1f} s (once per process)")
    model_a, model_b = p.make_model(0), p.make_model(0)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.01, momentum=0.9, foreach=True)
    bs = args.batch_size
    steps = math.ceil(p.n_train / bs)
    xr, yr = p.train_x[:bs].clone(), p.train_y[:bs].clone()
    gen = torch.Generator().manual_seed(0)
    # warm-up
    for _ in range(5):
        F.cross_entropy(model_b(xr), yr).backward()
    perm = torch.randperm(p.n_train, generator=gen)
    epoch_s = compute_s = 0.0
    k = 0
    while k < steps:
        n = min(args.block, steps - k)
        t = time.perf_counter()
        for j in range(k, k + n):
            train_batch(model_a, opt_a, p, perm[j * bs:(j + 1) * bs])   # the runner's own step
        epoch_s += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            model_b.zero_grad(set_to_none=True)
            F.cross_entropy(model_b(xr), yr).backward()
        compute_s += time.perf_counter() - t
        k += n
    print(f"full epoch ({steps} steps, batch {bs}, {args.threads} thread(s)): {epoch_s:.2f} s")
    print(f"pure compute (forward+backward, resident batch, same steps): {compute_s:.2f} s")
    print(f"ratio epoch / pure compute: {epoch_s / compute_s:.3f} (acceptance <= 2)")


if __name__ == "__main__":
    main()
