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
# declared equivalence margins (before running)
ACC_MARGIN = 0.5            # accuracy points (and train-minus-test gaps in points)
REL_MARGIN = 10.0           # percent of the reference (times, oscillation, NLL, Brier, entropy)
ECE_MARGIN = 1.0            # ECE points (ECE x 100)
LOSS_GAP_MARGIN = 0.02      # nats, test-minus-train loss gap


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


def paired_row(arm: str, question: str, metric: str, vs: str, pairs: np.ndarray, kind: str,
               margin: float, unit: str, better: int) -> dict:
    """One tested row from ``pairs`` [n, 2] = (arm, reference) values paired by seed: the
    mean paired difference (``kind`` "abs": arm - ref; "rel": 100 (arm - ref) / |mean ref|),
    Cohen's d_z, its 95% bootstrap CI and the exact sign-flip p (Holm: ``decide``)."""
    pairs = np.asarray(pairs, dtype=float).reshape(-1, 2)
    if pairs.size == 0:
        diffs = np.array([])
    elif kind == "abs":
        diffs = pairs[:, 0] - pairs[:, 1]
    else:
        scale = abs(pairs[:, 1].mean()) or 1.0
        diffs = 100 * (pairs[:, 0] - pairs[:, 1]) / scale
    sd = diffs.std(ddof=1) if diffs.size > 1 else float("nan")
    return {"arm": arm, "question": question, "metric": metric, "vs": vs, "n": int(diffs.size),
            "arm_mean": float(pairs[:, 0].mean()) if pairs.size else None,
            "base_mean": float(pairs[:, 1].mean()) if pairs.size else None,
            "diff": float(diffs.mean()) if diffs.size else float("nan"),
            "dz": float(diffs.mean() / sd) if sd and sd == sd and sd > 0 else None,
            "ci": bootstrap_ci(diffs), "p": paired_permutation_p(diffs),
            "margin": margin, "unit": unit, "better": better}


def decide(rows: list[dict]) -> list[dict]:
    """Holm over ``rows`` (one family) and the verdict of each (in place; returns ``rows``)."""
    for r, p in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = p
        r["verdict"] = verdict(r["ci"], p, r["margin"], r["better"], r["unit"])
    return rows
