"""Per-record values the verdict tables compare, read from result records alone, and their
pairing by seed.

Units: accuracies and ECE in points (x 100), NLL and entropy in nats, Brier as is. A value is
None when the record does not hold it (older results files, arms without that predictor) or
the run diverged; pairs keep only the seeds where both sides have a value.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from difflab.bench.shifts import CLEAN, CONDITIONS

POINTS = ("acc", "ece")       # metrics shown x 100


def calibration_value(r: dict, source: str, metric: str) -> float | None:
    """``metric`` (nll, brier, ece, acc, entropy) on the clean test set of a final record's
    final iterate (source "final"), trajectory average ("average") or ensemble
    ("ensemble")."""
    cal = r.get("calibration")
    if cal is None:
        return None
    values = cal.get("final") if source == "final" else (cal.get(source) or {}).get("metrics")
    if values is None or metric not in values:
        return None
    return 100 * values[metric] if metric in POINTS else values[metric]


def shift_value(r: dict, source: str, metric: str, condition: str | None = None
                ) -> float | None:
    """``metric`` (acc, nll, entropy) of a predictor under one shift ``condition`` (or
    ``CLEAN``: the same test images unshifted), or with ``condition=None`` the mean over the
    shifted conditions ``shifts.CONDITIONS`` (None unless all of them are present)."""
    per = (r.get("shift") or {}).get(source)
    if per is None:
        return None
    names = CONDITIONS if condition is None else (condition,)
    values = []
    for name in names:
        m = per.get(name)
        if m is None:
            return None
        values.append(100 * m[metric] if metric in POINTS else m[metric])
    return float(np.mean(values))


def paired_values(runs: list[dict], ref_runs: list[dict], value: Callable[[dict], float | None],
                  ref_value: Callable[[dict], float | None] | None = None) -> np.ndarray:
    """[n, 2] array of (value(run), ref_value(ref run)) over the seeds both sides have, in seed
    order, dropping seeds where either value is None."""
    ref_value = value if ref_value is None else ref_value
    a = {r["seed"]: value(r) for r in runs}
    b = {r["seed"]: ref_value(r) for r in ref_runs}
    rows = [[a[s], b[s]] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]
    return np.array(rows, float).reshape(-1, 2)


__all__ = ["CLEAN", "CONDITIONS", "calibration_value", "shift_value", "paired_values"]
