"""Sampling settings of a trained run (any data set): guidance x steps of the run's sampler and
grid, each scored on the same samples' seed against the test split with difflab's features (FID,
KID, IS, precision, recall, and the second feature space where one ships, MNIST).

Used to choose a recipe's ``sample`` section (CIFAR-10: BENCHMARKS.md, "CIFAR-10 recipe"). Each
row is appended to ``--out`` (JSON lines) as soon as it is measured, so a killed sweep continues.

    python benchmarks/generative/sampling_sweep.py runs/cifar10 --guidance 1 1.5 2 3 \\
        --steps 10 20 --out sweep.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from difflab.evaluation.evaluate import evaluate_images
    from difflab.runs import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1234, help="sample seed (the run report's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True, help="JSON-lines file of the rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load(args.run)
    reference = f"{model.config.data.dataset}-test"
    out = Path(args.out)
    done = {(r["guidance"], r["steps"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    for steps in args.steps:
        for guidance in args.guidance:
            if (guidance, steps) in done:
                continue
            started = time.perf_counter()
            images = model.generate(args.n, steps=steps, guidance=guidance, seed=args.seed)
            seconds = time.perf_counter() - started
            scores = evaluate_images(images, reference, args.data_dir)
            row = {"run": args.run, "sampler": model.config.sample.sampler, "steps": steps,
                   "grid": model.config.sample.grid, "guidance": guidance, "n": args.n,
                   "sample_seconds": round(seconds, 1),
                   **{k: v for k, v in scores.items() if isinstance(v, (int, float))}}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"steps {steps} guidance {guidance}: FID {row['fid']:.3f} KID {row['kid']:.4f} "
                  f"precision {row['precision']:.3f} recall {row['recall']:.3f}", flush=True)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    alt = any("alt_fid" in r for r in rows)
    print("\n| steps | guidance | FID | KID | IS | precision | recall |"
          + (" FID (second space) | KID (second space) |" if alt else ""))
    print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if alt else ""))
    for r in sorted(rows, key=lambda r: (r["steps"], r["guidance"])):
        print(f"| {r['steps']} | {r['guidance']:g} | {r['fid']:.3f} | {r['kid']:.4f} | "
              f"{r['is']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |"
              + (f" {r['alt_fid']:.3f} | {r['alt_kid']:.4f} |" if alt else ""))


if __name__ == "__main__":
    main()
