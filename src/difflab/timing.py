"""Interleaved timing: several callables timed in one process, robust to machine load.

Each repeat visits every callable once and runs it for a block of back-to-back calls, so load
from other processes hits all of them alike; the first repeat(s) warm up (allocator, oneDNN
primitive creation) and are discarded. A ratio per repeat then compares neighbouring blocks, and
the reported ratio to a reference callable is the median over repeats with a bootstrap CI::

    times = interleave({"sgd": sgd.step, "langevin": langevin.step}, repeats=30, block=200)
    summary = summarise(times, reference="sgd")
    summary["langevin"]  # {"seconds": ..., "ratio": ..., "ratio_ci": [lo, hi], "ratios": [...]}

| code name   | meaning                                                              |
| ----------- | -------------------------------------------------------------------- |
| ``block``   | calls per visit (an int for all, or a mapping name -> int)           |
| ``seconds`` | median over kept repeats of the seconds per call                     |
| ``ratios``  | per repeat: seconds per call / the reference's in the same repeat    |
| ``ratio``   | median of ``ratios``; ``ratio_ci`` its 95% percentile bootstrap CI   |
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from difflab.bench.stats import bootstrap_ci


def interleave(calls: Mapping[Hashable, Callable[[], object]], repeats: int,
               block: int | Mapping[Hashable, int] = 1, *, warmup: int = 1,
               alternate: bool = False) -> dict[Hashable, list[float]]:
    """Seconds per call of each callable, one value per kept repeat: ``{name: [s, ...]}``.

    ``warmup + repeats`` repeats run; each visits the callables in the mapping's order (reversed
    on odd repeats if ``alternate``) and times ``block`` consecutive calls of each (``block``
    may map names to their own block sizes). The first ``warmup`` repeats are discarded."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(calls)
    blocks = {n: (block[n] if isinstance(block, Mapping) else block) for n in names}
    if any(b < 1 for b in blocks.values()):
        raise ValueError(f"block sizes must be at least 1, got {blocks}")
    times: dict[Hashable, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    for rep in range(warmup + repeats):
        for name in (names[::-1] if alternate and rep % 2 else names):
            call, n = calls[name], blocks[name]
            t0 = clock()
            for _ in range(n):
                call()
            seconds = (clock() - t0) / n
            if rep >= warmup:
                times[name].append(seconds)
    return times


def summarise(times: Mapping[Hashable, Sequence[float]], reference: Hashable,
              level: float = 0.95) -> dict[Hashable, dict]:
    """Per callable: median seconds per call, and the median over repeats of its per-repeat
    ratio to ``reference`` with a ``level`` percentile bootstrap CI (``ratios``: all of them)."""
    ref = np.asarray(times[reference], dtype=float)
    out = {}
    for name, t in times.items():
        t = np.asarray(t, dtype=float)
        if t.shape != ref.shape:
            raise ValueError(f"{name!r} has {t.size} repeats, the reference {ref.size}")
        ratios = t / ref
        out[name] = {"seconds": float(np.median(t)), "ratio": float(np.median(ratios)),
                     "ratio_ci": bootstrap_ci(ratios, np.median, level),
                     "ratios": ratios.tolist()}
    return out
