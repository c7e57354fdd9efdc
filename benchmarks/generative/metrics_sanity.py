"""Sanity figures for difflab's metrics, and feature-extraction throughput.

    flock /tmp/difflab-heavy.lock python benchmarks/generative/metrics_sanity.py --data-dir ../shared/data

For MNIST and CIFAR-10 and N in (1000, 10000), with the reference = the whole test split and the
shipped feature network of that data set, it scores N images of:
  train      real images of the train split            (expect: small, the real-vs-real floor)
  blur       test images blurred (Gaussian, sigma=1 px) (expect: larger)
  noise      uniform noise in [-1, 1]                   (expect: huge)
and prints a markdown table (FID, KID, IS, precision, recall), then the time to extract features
of 10,000 MNIST test images with the chosen number of threads (acceptance: < 30 s on 2 cores).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from difflab.evaluation import metrics
from difflab.evaluation.evaluate import difflab_extractor, load_split, reference_features


def gaussian_blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 3 sigma), reflect padding; images [N, C, H, W]."""
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)   # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # along H


def row(dataset, case, n, fake, probs, ref, seed):
    gen = torch.Generator().manual_seed(seed)
    ref_stats = metrics.FeatureStats.of(ref)
    fid = metrics.fid_from_stats(metrics.FeatureStats.of(fake), ref_stats)
    kid, kid_std = metrics.kid(fake, ref, subsets=100, subset_size=1000, generator=gen)
    is_mean, is_std = metrics.inception_score(probs, splits=10)
    ref_sub = ref[torch.randperm(len(ref), generator=gen)[:n].numpy()]
    precision, recall = metrics.precision_recall(ref_sub, fake, k=3)
    return (f"| {dataset} | {case} | {n} | {fid:.3f} | {kid:.5f} ± {kid_std:.5f} | "
            f"{is_mean:.3f} ± {is_std:.3f} | {precision:.3f} | {recall:.3f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--datasets", nargs="*", default=["mnist", "cifar10"],
                   help="data sets for the sanity table (none: only the throughput line)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.datasets:
        print("| data | samples vs test split | N | FID | KID | IS | precision | recall |")
        print("|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        ex = difflab_extractor(dataset)
        ref, _ = reference_features(f"{dataset}-test", ex, args.data_dir)
        train_feats, train_probs = reference_features(f"{dataset}-train", ex, args.data_dir)
        test_images = load_split(dataset, "test", args.data_dir)
        gen = torch.Generator().manual_seed(args.seed)
        for n in args.sizes:
            idx = torch.randperm(len(train_feats), generator=gen)[:n].numpy()
            print(row(dataset, "train (real)", n, train_feats[idx], train_probs[idx], ref, args.seed))
            blurred = gaussian_blur(test_images[torch.randperm(len(test_images), generator=gen)[:n]])
            print(row(dataset, "blurred test", n, *ex(blurred), ref, args.seed))
            noise = torch.rand((n, *test_images.shape[1:]), generator=gen) * 2 - 1
            print(row(dataset, "uniform noise", n, *ex(noise), ref, args.seed), flush=True)

    ex = difflab_extractor("mnist")
    images = load_split("mnist", "test", args.data_dir)
    ex(images[:1000])  # warm-up
    start = time.perf_counter()
    feats, _ = ex(images)
    seconds = time.perf_counter() - start
    print(f"\nfeature extraction: {len(feats)} MNIST images in {seconds:.2f} s "
          f"({len(feats) / seconds:.0f} images/s, {args.threads} threads)")


if __name__ == "__main__":
    main()
