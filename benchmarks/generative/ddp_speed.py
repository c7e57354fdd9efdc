"""DDP on this machine: training images/s of 1 process x 1 thread against 2 processes x 1 thread
(torchrun, gloo on 127.0.0.1), the main recipe's U-Net on MNIST, and the share of a 2-process
step spent in the gradient all-reduce. Two ways to scale out, both measured:

- strong scaling, the same global batch (``optim.batch_size`` 64: each process computes 32), the
  setting in which difflab's DDP run equals the one-process run;
- weak scaling, the same batch per process (64 each, global batch 128), the way the PyTorch DDP
  paper measures scaling (Li et al. 2020, "PyTorch Distributed", VLDB: fixed per-GPU batch).

Each round launches the settings (order rotating between rounds, so machine load hits all
alike) and runs ``difflab.training.train.train`` itself for ``--warmup + --steps`` steps; images/s
is the global batch over the mean step time of the measured steps, from the run's own log (the
step time difflab's wall-time budget counts). A speed-up is the median over rounds of the
per-round ratio to the round's 1-process run (95% bootstrap CI). The all-reduce share comes
from the strong-scaling launch: after training, ``--pairs`` pairs of steps on the same batches
(the run's precision), one with the gradient all-reduce of ``train()``
(``distributed.average_gradients``) and one without (no communication), alternating; share =
1 - median(unsynced step time / synced step time); it includes the faster rank's wait for the
slower one, so the all-reduce alone (both ranks entering it after a barrier) is timed too. The
unsynced steps also give the ceiling of strong scaling on this machine: two processes computing
their halves with no communication at all. A fourth setting measures what this machine gives
two one-thread processes at all: two ordinary one-process trainings (no torchrun, no process
group), batch ``--batch`` each, started together; their images/s added. No 2-process setting can
be expected to beat it, so DDP's efficiency is each 2-process setting's images/s over it. Issue 11
asks for a speed-up of at least 1.6x.

    python benchmarks/generative/ddp_speed.py --rounds 5 --steps 40 --warmup 5 --pairs 20
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def measure_steps(config, warmup: int, steps: int) -> float:
    """Images/s of the run's measured steps (``warmup`` + 1 .. ``warmup`` + ``steps``), from its
    metrics.jsonl."""
    records = [json.loads(line) for line in
               (Path(config.loop.out) / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if "images_per_sec" in r and warmup < r["step"] <= warmup + steps]
    batch = config.optim.batch_size
    return len(measured) * batch / sum(batch / r["images_per_sec"] for r in measured)


def allreduce_share(config, pairs: int) -> dict:
    """Step times with and without DDP's gradient all-reduce on the same batches."""
    from difflab.device import resolve_precision
    from difflab.diffusion.denoiser import build_denoiser
    from difflab.training import distributed
    from difflab.training.train import batch_share, make_optimizer, optimization_step, prepare

    data, shape, config = prepare(config)
    precision = resolve_precision(config.run.precision, torch.device("cpu"))[0]
    torch.manual_seed(0)
    denoiser = build_denoiser(config, shape)
    model = denoiser.with_net(distributed.wrap(denoiser.net, torch.device("cpu")))
    optimizer = make_optimizer(denoiser.net, config, torch.device("cpu"))  # train()'s optimizer
    share = config.optim.batch_size // distributed.world_size()
    first = distributed.rank() * share

    def step(i: int, sync: bool) -> float:
        batch = batch_share(data, config, None, i, first, share)
        distributed.barrier()  # both ranks start together; the barrier is not timed
        started = time.perf_counter()
        optimization_step(model, denoiser.net, optimizer, config, batch, torch.device("cpu"),
                          precision, average=sync)  # train()'s step, with or without all-reduce
        return distributed.all_mean([time.perf_counter() - started])[0]

    for i in range(2):  # warm-up
        step(i, True), step(i, False)
    synced, unsynced = [], []
    for i in range(pairs):  # the same batch both ways, the order alternating
        order = (True, False) if i % 2 == 0 else (False, True)
        times = {sync: step(100 + i, sync) for sync in order}
        synced.append(times[True])
        unsynced.append(times[False])
    ratios = np.asarray(unsynced) / np.asarray(synced)
    alone = []  # the all-reduce itself, both ranks entering it together (no waiting)
    for _ in range(pairs):
        distributed.barrier()
        started = time.perf_counter()
        distributed.average_gradients(denoiser.net)
        alone.append(distributed.all_mean([time.perf_counter() - started])[0])
    # the unsynced steps once more, each rank at its own pace: no barrier, no all-reduce
    batches = [batch_share(data, config, None, 100 + i, first, share) for i in range(pairs)]
    distributed.barrier()
    started = time.perf_counter()
    for batch in batches:
        optimization_step(model, denoiser.net, optimizer, config, batch, torch.device("cpu"),
                          precision, average=False)
    free = distributed.all_mean([(time.perf_counter() - started) / pairs])[0]
    return {"step_seconds": float(np.median(synced)), "no_sync_seconds": float(np.median(unsynced)),
            "allreduce_share": float(1 - np.median(ratios)),
            "allreduce_alone_seconds": float(np.median(alone)), "free_seconds": free}


def worker(out: str, steps: int, warmup: int, pairs: int, batch: int, extra: int,
           precision: str) -> None:
    """One rank: train the main recipe (global batch ``batch``) for warmup + steps + extra steps,
    print its measurements (of the ``steps`` after the warm-up)."""
    from difflab.config import TrainConfig, update, validate
    from difflab.training import distributed
    from difflab.training.train import train

    config = TrainConfig()  # the main (MNIST) recipe
    update(config, {"loop": {"out": out, "steps": warmup + steps + extra, "minutes": "none",
                             "threads": 1, "log_every": 1, "sample_every": 10**9,
                             "checkpoint_every": 10**9}, "optim": {"batch_size": batch},
                    "run": {"precision": precision}})
    config = validate(config)
    train(config)
    result = {"processes": distributed.world_size(), "images_per_sec": measure_steps(config, warmup, steps)}
    if distributed.world_size() > 1 and pairs > 0:
        result.update(allreduce_share(config, pairs))
    if distributed.is_main():
        print("RESULT " + json.dumps(result), flush=True)


def _command(processes: int, batch: int, pairs: int, out: str, args, extra: int) -> list[str]:
    script = [__file__, "--worker", out, "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--pairs", str(pairs), "--batch", str(batch), "--extra", str(extra),
              "--precision", args.precision]
    if processes == 1:  # plain one-process training, as without torchrun
        return [sys.executable, *script]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *script]


def launch(processes: int, batch: int, pairs: int, args, copies: int = 1) -> dict:
    """Run the worker in ``processes`` processes of one thread each at global batch ``batch``;
    its RESULT line. ``copies`` > 1 starts that many independent such runs at once and adds
    their images/s (two one-process runs: what the machine gives two processes at all). The
    copies train ``--warmup`` steps past the measured ones, so that neither measures steps run
    alone after the other has finished (their starts differ by less than the warm-up)."""
    outs = [tempfile.mkdtemp(prefix=f"ddp-speed-{processes}p-") for _ in range(copies)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    logs = [tempfile.TemporaryFile("w+") for _ in outs]  # files, not pipes: no child ever
    try:                                                   # waits for its output to be read
        children = [subprocess.Popen(_command(processes, batch, pairs, out, args,
                                              args.warmup if copies > 1 else 0), text=True,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env={**env, "OMP_NUM_THREADS": "1"})
                    for out, log in zip(outs, logs)]
        for child in children:
            child.wait()
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
    results = []
    for child, log in zip(children, logs):
        log.seek(0)
        output = log.read()
        log.close()
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            raise SystemExit(f"{processes}-process launch failed:\n{output[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    if copies == 1:
        return results[0]
    return {"processes": copies * processes,
            "images_per_sec": sum(r["images_per_sec"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per launch")
    parser.add_argument("--warmup", type=int, default=5, help="steps discarded per launch")
    parser.add_argument("--pairs", type=int, default=20, help="synced/no_sync step pairs")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="run.precision of every launch (default: the recipe's auto)")
    parser.add_argument("--batch", type=int, default=64,
                        help="global batch of 1 process (and of 2 in strong scaling)")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--extra", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, args.pairs, args.batch, args.extra,
                      args.precision)
    if min(args.rounds, args.steps, args.pairs) < 1 or args.warmup < 0:
        parser.error("--rounds, --steps and --pairs must be at least 1, --warmup at least 0")
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch {args.batch}: must be even (2 processes share it)")
    from difflab.bench.stats import bootstrap_ci

    settings = {"1x1": (1, args.batch, 0, 1), "2x1 strong": (2, args.batch, args.pairs, 1),
                "2x1 weak": (2, 2 * args.batch, 0, 1),  # name: (processes, global batch, pairs,
                "2 x 1x1 apart": (1, args.batch, 0, 2)}  # independent copies)
    runs = {name: [] for name in settings}
    names = list(settings)
    for r in range(args.rounds):
        for name in names[r % 4:] + names[:r % 4]:
            processes, batch, pairs, copies = settings[name]
            runs[name].append(launch(processes, batch, pairs, args, copies))
        print(f"round {r + 1}: " + ", ".join(f"{name} {runs[name][-1]['images_per_sec']:.1f} img/s"
                                              for name in names) +
              f"; all-reduce {100 * runs['2x1 strong'][-1]['allreduce_share']:.1f}% of a strong "
              "step", flush=True)
    one = np.array([a["images_per_sec"] for a in runs["1x1"]])
    apart = np.array([a["images_per_sec"] for a in runs["2 x 1x1 apart"]])
    print(f"\n1 process x 1 thread (batch {args.batch}, precision {args.precision}): "
          f"{np.median(one):.1f} img/s")
    print(f"two such processes at once, apart (no communication; what this machine gives two "
          f"one-thread processes): {np.median(apart):.1f} img/s together, "
          f"{np.median(apart / one):.2f}x (per round: {', '.join(f'{c:.2f}' for c in apart / one)})")
    for name, per_process in (("2x1 strong", args.batch // 2), ("2x1 weak", args.batch)):
        two = np.array([b["images_per_sec"] for b in runs[name]])
        speedups = two / one
        low, high = bootstrap_ci(speedups, np.median) if len(speedups) > 1 else (speedups[0],) * 2
        print(f"{name} (global batch {settings[name][1]}, {per_process} per process): "
              f"{np.median(two):.1f} img/s, speed-up {np.median(speedups):.2f}x (95% CI "
              f"{low:.2f}-{high:.2f}, {len(speedups)} rounds; issue 11 asks >= 1.6x); "
              f"{100 * np.median(two / apart):.0f}% of the two processes apart")
    strong = runs["2x1 strong"]
    step_s = np.median([b["step_seconds"] for b in strong])
    alone_s = np.median([b["allreduce_alone_seconds"] for b in strong])
    print(f"gradient all-reduce: {100 * np.median([b['allreduce_share'] for b in strong]):.1f}% "
          f"of a strong-scaling step (synced {step_s:.3f} s, no_sync "
          f"{np.median([b['no_sync_seconds'] for b in strong]):.3f} s); the all-reduce alone, "
          f"both ranks entering it together: {1000 * alone_s:.1f} ms ({100 * alone_s / step_s:.1f}% "
          "of a step), the rest is the faster rank waiting for the slower one")
    lockstep = np.array([b["no_sync_seconds"] / b["free_seconds"] for b in strong])
    print(f"a rank's step without the all-reduce, in lockstep (a barrier before each step) against "
          f"at its own pace (no barrier): {np.median(lockstep):.2f}x the time (per round: "
          f"{', '.join(f'{c:.2f}' for c in lockstep)}; above 1: running in step costs compute "
          "time, besides the waiting)")
    # the same two processes with no communication at all: the most strong scaling can give here
    ceiling = np.array([args.batch / b["no_sync_seconds"] for b in strong]) / one
    print(f"strong scaling without the all-reduce (the step pairs' no_sync steps): "
          f"{np.median(ceiling):.2f}x (per round: {', '.join(f'{c:.2f}' for c in ceiling)})")


if __name__ == "__main__":
    main()
