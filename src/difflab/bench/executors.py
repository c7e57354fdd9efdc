"""Executors that turn run specs into records, and the JSONL results file they append to.

``sequential`` runs in this process; ``process`` uses a local process pool (spawned workers,
one torch thread each); ``ray`` submits one task per run to a Ray cluster (``address`` of a
running cluster, or a local Ray started here with ``workers`` CPUs). Only this process writes
the results file: one JSON line per finished run, flushed and fsynced, so an interrupted sweep
resumes by skipping the keys already present. Whichever executor ran a spec, its record is the
same apart from the fields under ``"timing"``.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from difflab.bench.runner import RunSpec, run_one

EXECUTORS = ("sequential", "process", "ray")


def read_records(path: str | os.PathLike) -> list[dict]:
    """All complete records in a JSONL file (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue   # interrupted write; that run is simply redone
    return records


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (after closing a torn last line, so the new record stays whole)."""
    path = Path(path)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _ray_run(spec: RunSpec, data_dir):
    return run_one(spec, data_dir)


def run_specs(specs: list[RunSpec], out: str | os.PathLike, executor: str = "sequential",
              data_dir=None, workers: int = 2, ray_address: str | None = None,
              progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the specs whose key is not yet in ``out``; return the records of all ``specs``."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
    data_dir = None if data_dir is None else str(data_dir)
    done = {r["key"]: r for r in read_records(out)}
    todo, seen = [], set()
    for s in specs:
        if s.key not in done and s.key not in seen:
            todo.append(s)
            seen.add(s.key)

    def finish(record: dict) -> None:
        append_record(out, record)
        done[record["key"]] = record
        if progress is not None:
            progress(record)

    if todo and executor == "sequential":
        for spec in todo:
            finish(run_one(spec, data_dir))
    elif todo and executor == "process":
        ctx = get_context("spawn")
        threads = todo[0].threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(run_one, spec, data_dir) for spec in todo]
            for fut in as_completed(futures):
                finish(fut.result())
    elif todo and executor == "ray":
        _run_ray(todo, data_dir, workers, ray_address, finish)
    return [done[s.key] for s in specs]


def _run_ray(todo: list[RunSpec], data_dir, workers: int, address: str | None, finish) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("executor 'ray' needs the ray package (pip install 'ray>=2.9')") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        threads = todo[0].threads
        remote = ray.remote(num_cpus=threads)(_ray_run)
        pending = [remote.remote(spec, data_dir) for spec in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                finish(ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()
