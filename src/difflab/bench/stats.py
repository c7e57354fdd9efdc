"""Paired statistics for the verdict table: bootstrap CIs, exact paired permutation test, Holm.

| code name        | meaning                                                           |
| ---------------- | ----------------------------------------------------------------- |
| ``diffs``        | per-seed differences arm - baseline (paired by seed)              |
| ``margin``       | equivalence margin declared before running (same unit as diffs)   |
| ``better``       | +1 if larger values are better for the metric, -1 if smaller      |

Verdict rule (declared): with the 95% CI [lo, hi] of the mean paired difference and the
Holm-adjusted p-value p: CI inside (-margin, +margin) -> "no measurable difference within
+-margin"; CI entirely on the favourable side of 0 and p < 0.05 -> "better"; entirely on the
unfavourable side and p < 0.05 -> "worse"; otherwise "inconclusive".
"""
from __future__ import annotations

import itertools

import numpy as np

BOOTSTRAP_SAMPLES = 10000
ALPHA = 0.05


def bootstrap_ci(values, statistic=np.mean, level: float = 0.95, seed: int = 0,
                 samples: int = BOOTSTRAP_SAMPLES) -> list[float]:
    """Percentile bootstrap CI of ``statistic`` over resampled ``values`` (pairs resampled
    together when ``values`` are paired differences)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(samples, v.size))
    stats = np.apply_along_axis(statistic, 1, v[idx]) if statistic is not np.mean else v[idx].mean(1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def paired_permutation_p(diffs, seed: int = 0, samples: int = 20000) -> float:
    """Two-sided sign-flip permutation p-value of the mean paired difference (exact for n<=16)."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(samples, n))
    means = np.abs((signs * d).mean(1))
    return float(np.mean(means >= observed - 1e-12))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (NaN entries stay NaN, not counted)."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    adjusted = np.full(p.shape, np.nan)
    order = valid[np.argsort(p[valid])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdict(ci: list[float], p_adj: float, margin: float, better: int, unit: str) -> str:
    """Plain-word verdict from the CI of the mean paired difference and the adjusted p-value."""
    lo, hi = ci
    if np.isnan(lo) or np.isnan(hi):
        return "not measurable (no paired data)"
    if -margin < lo and hi < margin:
        return f"no measurable difference within +-{margin:g} {unit}"
    favourable = (lo > 0) if better > 0 else (hi < 0)
    unfavourable = (hi < 0) if better > 0 else (lo > 0)
    significant = not np.isnan(p_adj) and p_adj < ALPHA
    if favourable and significant:
        return "better"
    if unfavourable and significant:
        return "worse"
    if favourable or unfavourable:
        side = "better" if favourable else "worse"
        return f"inconclusive: CI excludes 0 ({side}) but not significant after Holm"
    return f"inconclusive: CI spans 0 and exceeds the +-{margin:g} {unit} margin"
