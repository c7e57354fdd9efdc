"""DiT against U-Net on MNIST at (nearly) equal parameters and equal CPU minutes.

Each arm is the main (MNIST) recipe with another network: the default U-Net, a DiT (Peebles & Xie
2023) of about the same parameter count with 2x2 patches (196 tokens), the same with 4x4 patches (49
tokens, about a quarter of the compute) and the 2x2 one with U-ViT long skips (Bao et al. 2023).
Every arm trains in a process of its own with ONE thread for ``--minutes`` of training time; up to
``--jobs`` arms run at once, one per core, so each gets the same CPU minutes (arms that share the
machine also share its memory bandwidth: run with ``--jobs 1`` for a quiet-machine figure). Then
each arm samples ``--n`` images with the recipe's sampler (10 DPM-Solver++(2M) steps, guidance
1.5, one thread) and is scored in both MNIST feature spaces (FID, KID, precision, recall).

    python benchmarks/generative/dit_vs_unet.py --minutes 7 --jobs 1 --data-dir ../shared/data

Prints a table: parameters, training steps and images/s, sampling images/s, FID in both spaces.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = {  # config sections of each arm on top of the main recipe (lr 2e-3, warm-up 200 steps)
    "unet": {"net": {"kind": "unet"}},
    "dit": {"net": {"kind": "dit", "width": 96, "depth": 7, "heads": 4, "patch": 2}},
    "dit-p4": {"net": {"kind": "dit", "width": 96, "depth": 7, "heads": 4, "patch": 4}},
    "dit-skips": {"net": {"kind": "dit", "width": 96, "depth": 7, "heads": 4, "patch": 2,
                          "long_skips": True}},
}


def worker(arm: str, out: str, minutes: float, n: int, data_dir: str | None, seed: int) -> None:
    """Train one arm with one thread, sample and score it; print a RESULT line."""
    import torch

    from difflab.config import TrainConfig, update, validate
    from difflab.evaluation.evaluate import evaluate_images
    from difflab.runs import load
    from difflab.training.checkpoint import read_checkpoint
    from difflab.training.train import train

    torch.set_num_threads(1)
    config = TrainConfig()
    update(config, ARMS[arm])
    update(config, {"data": {"data_dir": data_dir}, "run": {"seed": seed},
                    "loop": {"out": out, "minutes": minutes, "threads": 1,
                             "sample_every": 10**9, "checkpoint_every": 10**9},
                    "sample": {"final_samples": 0}})
    run_dir = train(validate(config))
    info = read_checkpoint(run_dir)[0]
    model = load(run_dir)
    started = time.perf_counter()
    samples = model.generate(n, seed=seed + 1)
    sample_seconds = time.perf_counter() - started
    scores = evaluate_images(samples, "mnist-test", data_dir)
    result = {"arm": arm, "parameters": sum(p.numel() for p in model.denoiser.net.parameters()),
              "steps": info["step"], "train_seconds": info["train_seconds"],
              "train_images_per_sec": info["images_seen"] / info["train_seconds"],
              "sample_images_per_sec": n / sample_seconds,
              **{k: scores[k] for k in scores if isinstance(scores[k], (int, float))}}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--minutes", type=float, default=12.0, help="training minutes per arm")
    parser.add_argument("--n", type=int, default=1000, help="samples scored per arm")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at once (one core each)")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("ARM", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.minutes, args.n, args.data_dir, args.seed)
    if args.minutes <= 0 or args.n < 2 or args.jobs < 1:
        parser.error("--minutes must be positive, --n at least 2, --jobs at least 1")

    root = Path(tempfile.mkdtemp(prefix="dit-vs-unet-"))
    pending, running, results = list(args.arms), [], []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            command = [sys.executable, __file__, "--worker", arm, str(root / arm), "--minutes",
                       str(args.minutes), "--n", str(args.n), "--seed", str(args.seed)]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            running.append((arm, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True, env=env)))
        arm, process = running.pop(0)
        stdout, stderr = process.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode or not lines:
            raise SystemExit(f"arm {arm} failed:\n{stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{arm}: done", flush=True)

    print(f"\n{args.minutes:g} training minutes per arm, 1 thread each, {args.jobs} at once; "
          f"{args.n} samples (10 DPM-Solver++(2M) steps, guidance 1.5)\n")
    print("| network | parameters | steps | train img/s | sample img/s | FID | KID | precision "
          "| recall | FID (second space) | KID (second space) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: args.arms.index(r["arm"])):
        print(f"| {r['arm']} | {r['parameters']:,} | {r['steps']} | "
              f"{r['train_images_per_sec']:.1f} | {r['sample_images_per_sec']:.1f} | "
              f"{r['fid']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['alt_fid']:.3f} | {r['alt_kid']:.4f} |")


if __name__ == "__main__":
    main()
