"""``difflab bench optimizers``: the optimizer benchmark harness (``difflab.bench``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_bench_parser(sub) -> None:
    from difflab.options import BENCH_PROBLEMS, BUDGETS, EXECUTORS

    p = sub.add_parser("bench", help="benchmarks: bench optimizers (Langevin vs SGD/momentum/Adam)")
    p.add_argument("what", choices=["optimizers"], help="what to benchmark")
    p.add_argument("--problem", default="cifar10-cnn", choices=BENCH_PROBLEMS)
    p.add_argument("--budget", default="quick", choices=BUDGETS)
    p.add_argument("--executor", default="sequential", choices=EXECUTORS)
    p.add_argument("--workers", type=int, default=2, help="process/local-Ray workers")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="bench-optimizers", help="output directory")
    p.add_argument("--data-dir", default=None, help="data directory (else $DIFFLAB_DATA)")
    p.add_argument("--report-only", action="store_true",
                   help="only regenerate the report from OUT/results.jsonl")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    """``difflab bench optimizers``."""
    from difflab.bench import run_benchmark

    if args.report_only:
        from difflab.bench import planned_keys
        from difflab.bench.report import write_report

        results = Path(args.out) / "results.jsonl"
        keys = planned_keys(results) if results.is_file() else None
        print(write_report(results, args.out, keys=keys))
        return 0
    command = "difflab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_benchmark(args.problem, args.budget, args.out, executor=args.executor,
                  data_dir=args.data_dir, workers=args.workers, ray_address=args.ray_address,
                  threads=args.threads, command=command)
    return 0
