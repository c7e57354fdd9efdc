"""Optimizer benchmark harness: problems x optimizers x hyperparameters x seeds -> JSONL records
-> report. ``run_benchmark`` is what ``difflab bench optimizers`` calls."""
from __future__ import annotations

import time
from pathlib import Path

from difflab.bench.executors import EXECUTORS, append_record, read_records, run_specs
from difflab.bench.plan import BUDGETS, final_specs, get_budget, tuning_specs
from difflab.bench.problems import PROBLEMS, load_problem
from difflab.bench.runner import ARMS

__all__ = ["run_benchmark", "ARMS", "BUDGETS", "EXECUTORS", "PROBLEMS"]


def run_benchmark(problem: str, budget: str, out: str | Path, executor: str = "sequential",
                  data_dir=None, workers: int = 2, ray_address: str | None = None,
                  threads: int = 1, arms: tuple[str, ...] = ARMS, command: str | None = None,
                  log=print) -> Path:
    """Tuning sweep -> selection -> final runs -> overhead timing -> report; resumable."""
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r} (choose from {', '.join(PROBLEMS)})")
    b = get_budget(budget, problem)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    t0 = time.time()
    if command and not any(r.get("kind") == "meta" for r in read_records(results)):
        append_record(results, {"kind": "meta", "key": "meta", "command": command,
                                "budget": budget, "problem": problem, "executor": executor})

    def progress(r: dict) -> None:
        log(f"[{time.time() - t0:7.1f}s] {r['phase']:5s} {r['arm']:11s} seed {r['seed']:3d} "
            f"{r['hparams']} val_acc {r['curve']['val_acc'][-1]:.4f}")

    common = dict(out=results, executor=executor, data_dir=data_dir, workers=workers,
                  ray_address=ray_address, progress=progress)
    tune = run_specs(tuning_specs(problem, b, threads, arms), **common)
    run_specs(final_specs(problem, b, tune, threads, arms), **common)
    if not any(r.get("kind") == "overhead" for r in read_records(results)) and "sgd" in arms:
        from difflab.bench.overhead import measure_overhead
        from difflab.bench.plan import select

        p = load_problem(problem, None if data_dir is None else str(data_dir),
                         b.final_n_train, b.n_val, b.n_test)
        configs = {arm: select(tune, arm)["hparams"] for arm in arms}
        batch = (p.train_x[:128], p.train_y[:128])
        log("measuring step overhead (interleaved, one process)")
        append_record(results, measure_overhead(problem, configs, p.n_train,
                                                repeats=b.overhead_repeats, batch=batch,
                                                threads=threads))
    from difflab.bench.report import write_report

    path = write_report(results, out)
    log(f"report: {path} ({time.time() - t0:.1f} s this invocation)")
    return path
