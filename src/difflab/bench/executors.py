"""Executors that turn run specs into records, and the JSONL results file they append to.

``sequential`` runs in this process; ``process`` uses a local process pool (spawned workers,
one torch thread each); ``ray`` submits one task per run to a Ray cluster (``address`` of a
running cluster, or a local Ray started here with ``workers`` CPUs). Only this process writes
the results file: one JSON line per finished run, flushed and fsynced, so an interrupted sweep
resumes by skipping the keys already present. Whichever executor ran a spec, its record is the
same apart from the fields under ``"timing"``.

The results file is read and written through ``difflab.bench.records`` (validated both ways).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Callable

from difflab.bench.records import append_record, read_records
from difflab.bench.runner import RunSpec, run_one
from difflab.options import EXECUTORS

RAY_CONNECT_TIMEOUT = 5.0     # seconds for the TCP probe of --ray-address
RAY_INIT_TIMEOUT = 30.0       # seconds for ray.init(address=...) to connect

def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _ray_run(spec: RunSpec, data_dir):
    return run_one(spec, data_dir)


def run_specs(specs: list[RunSpec], out: str | os.PathLike, executor: str = "sequential",
              data_dir=None, workers: int = 2, ray_address: str | None = None,
              progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the specs whose key is not yet in ``out``; return the records of all ``specs``."""
    if not isinstance(executor, str) or executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"invalid workers {workers!r} (must be an integer >= 1)")
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


def _ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit Ray address (``host:port`` or ``ray://host:port``); None for
    ``auto``/``local``, which Ray resolves itself."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"invalid Ray address {address!r} (expected host:port, "
                         "ray://host:port, 'auto' or 'local')")
    a = address.strip()
    if a in ("auto", "local"):
        return None
    if "://" in a:
        a = a.split("://", 1)[1]
    host, sep, port = a.rstrip("/").rpartition(":")
    host = host.strip("[]")                    # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid Ray address {address!r} (expected host:port, "
                         "ray://host:port, 'auto' or 'local')")
    return host, int(port)


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """Fail fast (one-line ValueError) if nothing accepts TCP connections at a Ray address:
    a refused connection fails at once, an unreachable host after ``timeout`` seconds."""
    target = _ray_host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e)
                                                                     or type(e).__name__)
        raise ValueError(f"cannot reach the Ray cluster at {address}: {reason} (is a Ray head "
                         "node running there? start one with `ray start --head`)") from None


class _QuietThreadWarning(logging.Filter):
    """Ray warns that a driver started outside the main thread sets no SIGTERM handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _ray_init(ray, address: str, timeout: float = RAY_INIT_TIMEOUT) -> threading.Event:
    """``ray.init(address=...)`` that gives up after ``timeout`` seconds (Ray itself retries
    for minutes, printing connection warnings) with a one-line ValueError.

    ray.init runs in a daemon thread that then stays alive until the returned event is set
    (after ``ray.shutdown()``): processes Ray starts get a parent-death signal tied to the
    thread that started them, so that thread must outlive the Ray session. A thread that does
    not finish in time is left behind and exits as soon as ray.init returns."""
    result: dict = {}
    ready, stop = threading.Event(), threading.Event()

    def target() -> None:
        try:
            ray.init(address=address, log_to_driver=False)
        except BaseException as e:      # reported in the caller's thread
            result["error"] = e
        finally:
            ready.set()
        stop.wait()

    quiet = _QuietThreadWarning()
    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(quiet)
    try:
        threading.Thread(target=target, name="difflab-ray-init", daemon=True).start()
        finished = ready.wait(timeout)
    finally:
        logger.removeFilter(quiet)
    if not finished:
        stop.set()
        raise ValueError(f"cannot connect to the Ray cluster at {address}: ray.init did not "
                         f"finish within {timeout:g} s (is it the head node's GCS port, "
                         "6379 by default?)")
    if "error" in result:
        stop.set()
        e = result["error"]
        text = str(e).strip().splitlines()
        raise ValueError(f"cannot connect to the Ray cluster at {address}: "
                         f"{text[0] if text else type(e).__name__}") from e
    return stop


def _run_ray(todo: list[RunSpec], data_dir, workers: int, address: str | None, finish) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("executor 'ray' needs the ray package (pip install 'ray>=2.9')") from None
    started_here = not ray.is_initialized()
    release = None
    if started_here:
        if address:
            check_ray_address(address)
            release = _ray_init(ray, address)
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
        if release is not None:
            release.set()
