"""Optimizer benchmark harness: problems x optimizers x hyperparameters x seeds -> JSONL records
-> report. ``run_benchmark`` is what ``difflab bench optimizers`` calls."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from difflab.bench.executors import EXECUTORS, check_ray_address, run_specs
from difflab.bench.plan import BUDGETS, final_specs, get_budget, tuning_specs
from difflab.bench.problems import PROBLEMS, load_problem
from difflab.bench.records import append_record, read_records
from difflab.bench.runner import ARMS, BASELINES

__all__ = ["run_benchmark", "ARMS", "BUDGETS", "EXECUTORS", "PROBLEMS"]


def _choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r} (choose from {', '.join(choices)})")


def _positive_int(name: str, value, most: int = 1024) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ValueError(f"invalid {name} {value!r} (must be an integer in [1, {most}])")


def check_arguments(problem, budget, out, executor="sequential", data_dir=None, workers=2,
                    ray_address=None, threads=1, arms=ARMS, command=None) -> Path:
    """Validate ``run_benchmark``'s arguments before any work starts (one-line ValueError
    naming the argument and value); returns the results file path."""
    _choice("problem", problem, PROBLEMS)
    _choice("budget", budget, BUDGETS)
    _choice("executor", executor, EXECUTORS)
    _positive_int("workers", workers)
    _positive_int("threads", threads)
    if isinstance(arms, str) or not isinstance(arms, (tuple, list)) or not arms:
        raise ValueError(f"invalid arms {arms!r} (a non-empty list of {', '.join(ARMS)})")
    for arm in arms:
        if not isinstance(arm, str) or arm not in ARMS:
            raise ValueError(f"invalid arms: unknown arm {arm!r} (choose from {', '.join(ARMS)})")
    if len(set(arms)) != len(arms):
        raise ValueError(f"invalid arms {list(arms)!r} (an arm is repeated)")
    if not set(arms) & set(BASELINES):
        raise ValueError(f"invalid arms {list(arms)!r} (the report compares with a baseline: "
                         f"include one of {', '.join(BASELINES)})")
    if command is not None and not isinstance(command, str):
        raise ValueError(f"invalid command {command!r} (must be a string)")
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise ValueError(f"invalid out {out!r} (must be a directory path)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} is an existing file, not a directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"out {str(out)!r}: {str(parent)!r} is a file, not a directory")
            break
    results = out / "results.jsonl"
    if results.exists() and not results.is_file():
        raise ValueError(f"{results} exists and is not a file")
    if out.is_dir() and not results.exists() and any(out.iterdir()):  # a user's folder, a run
        raise ValueError(f"out {str(out)!r} holds other files and no results.jsonl (not a "
                         "difflab bench directory); choose a new or empty directory")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"data_dir {str(data_dir)!r} is not a directory")
    if ray_address is not None:
        if executor != "ray":
            raise ValueError(f"ray_address {ray_address!r} given with executor {executor!r} "
                             "(it is used by executor 'ray' only)")
        check_ray_address(ray_address)
    return results


def _check_same_sweep(records: list[dict], results: Path, problem: str, budget: str) -> None:
    """An existing results file of another problem or budget is not extended (the report
    covers one sweep): one-line ValueError instead of mixing them."""
    for r in records:
        other_budget = r.get("budget") if r.get("kind") == "meta" else None
        if r.get("problem") != problem or (other_budget is not None and other_budget != budget):
            held = f"problem {r.get('problem')!r}" + (
                f", budget {other_budget!r}" if other_budget is not None else "")
            raise ValueError(f"{results} holds results of {held}; use another out directory "
                             f"for problem {problem!r}, budget {budget!r}")


def planned_keys(results: str | Path) -> set[str] | None:
    """Keys of the runs the current code plans for the sweep in ``results`` (its meta record's
    problem and budget, the arms and thread count of its tuning runs, the selection from its
    tuning records), so that ``difflab bench optimizers --report-only`` leaves out runs of an
    older plan as ``run_benchmark`` does; None when the file does not say (no meta record, no
    tuning runs, or a plan that cannot be rebuilt from it)."""
    records = read_records(results)
    meta = [r for r in records if r.get("kind") == "meta"]
    tune_records = [r for r in records if r.get("kind", "run") == "run"
                    and r["phase"] in ("tune", "grid")]
    if not meta or not tune_records:
        return None
    try:
        problem, b = meta[-1]["problem"], get_budget(meta[-1]["budget"], meta[-1]["problem"])
        threads = json.loads(tune_records[0]["key"])["threads"]
        arms = tuple(a for a in ARMS if any(r["arm"] == a for r in tune_records))
        tune_plan = tuning_specs(problem, b, threads, arms)
        keys = {s.key for s in tune_plan}
        final_plan = final_specs(problem, b, [r for r in records if r.get("key") in keys],
                                 threads, arms)
    except (ValueError, KeyError, TypeError):
        return None
    return keys | {s.key for s in final_plan}


def run_benchmark(problem: str, budget: str, out: str | Path, executor: str = "sequential",
                  data_dir=None, workers: int = 2, ray_address: str | None = None,
                  threads: int = 1, arms: tuple[str, ...] = ARMS, command: str | None = None,
                  log=print) -> Path:
    """Tuning sweep -> selection -> final runs -> overhead timing -> report; resumable.

    Every argument is checked first (``check_arguments``; the Ray address is probed), as is
    an existing results file (same problem and budget), so bad input fails with one line
    before any run starts or anything is written."""
    results = check_arguments(problem, budget, out, executor, data_dir, workers, ray_address,
                              threads, arms, command)
    arms = tuple(arms)
    b = get_budget(budget, problem)
    existing = read_records(results)
    _check_same_sweep(existing, results, problem, budget)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if command and not any(r.get("kind") == "meta" for r in existing):
        append_record(results, {"kind": "meta", "key": "meta", "command": command,
                                "budget": budget, "problem": problem, "executor": executor})

    def progress(r: dict) -> None:
        log(f"[{time.time() - t0:7.1f}s] {r['phase']:5s} {r['arm']:11s} seed {r['seed']:3d} "
            f"{r['hparams']} val_acc {r['curve']['val_acc'][-1]:.4f}")

    common = dict(out=results, executor=executor, data_dir=data_dir, workers=workers,
                  ray_address=ray_address, progress=progress)
    tune_plan = tuning_specs(problem, b, threads, arms)
    tune = run_specs(tune_plan, **common)
    final_plan = final_specs(problem, b, tune, threads, arms)
    run_specs(final_plan, **common)
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

    path = write_report(results, out, keys={s.key for s in tune_plan + final_plan})
    log(f"report: {path} ({time.time() - t0:.1f} s this invocation)")
    return path
