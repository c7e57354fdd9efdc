"""The five metrics of the protocol, computed from result records alone, and the verdict table.

Declared before running (see OPTIMIZER-BENCH-PROTOCOL.md): speed = epochs to reach 95% of the
strongest baseline's median final validation accuracy (a miss counts as horizon + one
evaluation interval, and the reach rate is reported); stability = std of the per-step loss over
the last epoch, divergence rate over the tuning grid, spikes; overfitting = final train-minus-test
accuracy gap; sensitivity = width in log10(lr) of the region within 95% of the best tuning
accuracy; overhead = median step() time relative to SGD. Equivalence margins: +-0.5 accuracy
points, +-10% for times and oscillation, +-10% for the step-time ratio.

Calibration (own Holm family, so the primary table is unchanged): test NLL and Brier of each
Langevin-family arm's final iterate and of its trajectory average (mean test softmax over the
last epoch's thinned iterates, ``runner.trajectory_schedule``) against the strongest baseline's
final iterate, relative, margin +-10%; ECE (15 bins) in points (x100), margin +-1 point.

Noise isolated (own Holm family): each noisy arm against its noiseless twin (``runner.TWINS``:
the same update with temperature 0, the partner's selected lr, the same seeds), diff = noisy -
twin: test accuracy and train-minus-test gap (points, +-0.5), final-iterate test NLL (+-10%).

Own Holm families as well, each in its module: ensembles at the same total epochs
(``ensemble_analysis``), robustness under shifted inputs (``robustness``), overfitting at
matched training accuracy (``matched``). Ensemble arms are not single models: they are left out
of the per-arm summary, the sensitivity table and the learning curves.
"""
from __future__ import annotations

import math

import numpy as np

from difflab.bench.ensemble_analysis import ensemble_rows
from difflab.bench.matched import matched_rows
from difflab.bench.plan import final_val_acc, select
from difflab.bench.robustness import robustness_rows
from difflab.bench.runner import BASELINES, ENSEMBLES, LANGEVIN_ARMS, TWINS
from difflab.bench.stats import (ACC_MARGIN, ECE_MARGIN, REL_MARGIN, decide, holm, paired_row,
                                 verdict)
from difflab.bench.values import calibration_value, paired_values

TARGET_FRACTION = 0.95
SENSITIVITY_FRACTION = 0.95


def split_records(records: list[dict]) -> dict:
    runs = [r for r in records if r.get("kind", "run") == "run"]
    return {"tune": [r for r in runs if r["phase"] in ("tune", "grid")],
            "final": [r for r in runs if r["phase"] == "final"],
            "overhead": [r for r in records if r.get("kind") == "overhead"],
            "meta": [r for r in records if r.get("kind") == "meta"]}


def by_arm(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        out.setdefault(r["arm"], []).append(r)
    return out


def strongest_baseline(finals: dict[str, list[dict]]) -> str:
    present = [a for a in BASELINES if a in finals]
    if not present:
        raise ValueError("no final runs of a baseline arm (sgd, momentum, momentum_wd, adam)")
    return max(present, key=lambda a: np.mean([final_val_acc(r) for r in finals[a]]))


def is_divergent(r: dict) -> bool:
    last = r["curve"]["train_loss"][-1]
    return r["diverged"] or last is None or last > r["initial_loss"]


def run_metrics(r: dict, target: float) -> dict:
    c = r["curve"]
    epochs = c["epoch"]
    step = epochs[0] if epochs else 1.0
    reach = next((i for i, a in enumerate(c["val_acc"]) if a >= target), None)
    m = {"test_acc": 100 * c["test_acc"][-1], "val_acc": 100 * c["val_acc"][-1],
         "reached": reach is not None,
         "epochs_to_target": epochs[reach] if reach is not None else epochs[-1] + step,
         "seconds_to_target": r["timing"]["train_seconds"][reach] if reach is not None else None,
         "oscillation": r["last_epoch_loss_std"], "spikes": r["spikes"],
         "gap": 100 * (c["train_eval_acc"][-1] - c["test_acc"][-1])}
    best = int(np.argmax(c["val_acc"]))
    m["gap_at_best"] = 100 * (c["train_eval_acc"][best] - c["test_acc"][best])
    test_losses = [v for v in c["test_loss"] if v is not None]
    m["test_loss_climb"] = test_losses[-1] - min(test_losses) if test_losses else None
    val_losses = [(v, e) for v, e in zip(c["val_loss"], epochs) if v is not None]
    m["epoch_min_val_loss"] = min(val_losses)[1] if val_losses else None
    return m


def sensitivity(tune_runs: list[dict], arm: str) -> dict:
    """Validation accuracy vs lr at the selected value of the arm's second knob."""
    best = select(tune_runs, arm)
    if best is None:
        return {}
    knob = {k: v for k, v in best["hparams"].items() if k != "lr"}
    pts = sorted((r["hparams"]["lr"], final_val_acc(r)) for r in tune_runs
                 if r["arm"] == arm and r["phase"] == "tune"
                 and {k: v for k, v in r["hparams"].items() if k != "lr"} == knob)
    top = max(a for _, a in pts)
    good = [lr for lr, a in pts if a >= SENSITIVITY_FRACTION * top]
    lrs = [lr for lr, _ in pts]
    spacing = (math.log10(lrs[-1]) - math.log10(lrs[0])) / (len(lrs) - 1) if len(lrs) > 1 else 0
    return {"knob": knob, "points": pts, "width": math.log10(max(good)) - math.log10(min(good)),
            "grid_step": spacing, "best_lr": best["hparams"]["lr"]}


def _paired(base: list[dict], arm: list[dict], metric: str, target: float) -> np.ndarray:
    b = {r["seed"]: run_metrics(r, target)[metric] for r in base}
    a = {r["seed"]: run_metrics(r, target)[metric] for r in arm}
    seeds = sorted(set(a) & set(b))
    return np.array([[a[s], b[s]] for s in seeds if a[s] is not None and b[s] is not None], float)


CALIBRATION_TESTS = (("nll", "rel", REL_MARGIN, "%"), ("brier", "rel", REL_MARGIN, "%"),
                     ("ece", "abs", ECE_MARGIN, "points"))


def calibration_rows(finals: dict[str, list[dict]], base: str) -> list[dict]:
    """Final iterate and trajectory average of each Langevin-family arm vs the strongest
    baseline's final iterate (lower is better); [] when the records hold no calibration."""
    if not any("calibration" in r for runs in finals.values() for r in runs):
        return []
    rows = []
    for arm in [a for a in LANGEVIN_ARMS if a in finals]:
        for source in ("final", "average"):
            for metric, kind, margin, unit in CALIBRATION_TESTS:
                pairs = paired_values(
                    finals[arm], finals[base], lambda r: calibration_value(r, source, metric),
                    lambda r: calibration_value(r, "final", metric))
                row = paired_row(arm, "calibration", metric, base, pairs, kind, margin, unit, -1)
                row["source"] = source
                rows.append(row)
    return decide(rows)


TWIN_TESTS = (("test_acc", "abs", ACC_MARGIN, "points", +1), ("gap", "abs", ACC_MARGIN, "points", -1))


def twin_rows(finals: dict[str, list[dict]], target: float) -> list[dict]:
    """Noisy arm - its noiseless twin (same lr, same seeds), paired by seed."""
    rows = []
    for twin, (partner, _) in TWINS.items():
        if twin not in finals or partner not in finals:
            continue
        for metric, kind, margin, unit, better in TWIN_TESTS:
            pairs = _paired(finals[twin], finals[partner], metric, target)
            rows.append(paired_row(partner, "noise", metric, twin, pairs, kind, margin, unit, better))
        pairs = paired_values(finals[partner], finals[twin],
                              lambda r: calibration_value(r, "final", "nll"))
        if pairs.size:
            rows.append(paired_row(partner, "noise", "nll", twin, pairs, "rel", REL_MARGIN, "%", -1))
    return decide(rows)


def check_one_sweep(parts: dict) -> None:
    """ValueError unless the records are one sweep: one problem, the final runs on one
    evaluation grid (records of different sweeps cannot be compared)."""
    problems = sorted({r["problem"] for key in ("tune", "final", "overhead", "meta")
                       for r in parts[key]})
    if len(problems) > 1:
        raise ValueError(f"records of several problems ({', '.join(problems)}); a report "
                         "covers one sweep")
    grids = {tuple(r["curve"]["epoch"]) for r in parts["final"]}
    if len(grids) > 1:
        raise ValueError(f"final runs of different lengths/evaluation points ({len(grids)} "
                         "different curves); a report covers one sweep")


def verdict_rows(records: list[dict]) -> dict:
    """Everything the report prints: target, baseline, per-arm summaries and verdict rows.
    ``records`` are well-formed (``executors.read_records``)."""
    parts = split_records(records)
    check_one_sweep(parts)
    finals = by_arm(parts["final"])
    base = strongest_baseline(finals)
    target = TARGET_FRACTION * float(np.median([final_val_acc(r) for r in finals[base]]))
    rows = []
    tests = [("accuracy", "test_acc", +1, "abs", ACC_MARGIN, "points"),
             ("speed", "epochs_to_target", -1, "rel", REL_MARGIN, "%"),
             ("stability", "oscillation", -1, "rel", REL_MARGIN, "%"),
             ("overfitting", "gap", -1, "abs", ACC_MARGIN, "points")]
    for arm in [a for a in LANGEVIN_ARMS if a in finals]:
        for question, metric, better, kind, margin, unit in tests:
            pairs = _paired(finals[base], finals[arm], metric, target)
            rows.append(paired_row(arm, question, metric, base, pairs, kind, margin, unit, better))
        if parts["overhead"]:
            oh = parts["overhead"][-1]["arms"]
            if arm in oh:
                ratio = oh[arm]["step_ratio"]
                lo, hi = oh[arm]["step_ratio_ci"]
                rows.append({"arm": arm, "question": "overhead", "metric": "step_ratio",
                             "vs": "sgd", "n": None, "arm_mean": ratio, "base_mean": 1.0,
                             "diff": 100 * (ratio - 1), "dz": None,
                             "ci": [100 * (lo - 1), 100 * (hi - 1)],
                             "p": float("nan"), "margin": REL_MARGIN, "unit": "%", "better": -1})
    adjusted = holm([r["p"] for r in rows])
    for r, p in zip(rows, adjusted):
        r["p_holm"] = p
        if r["question"] == "overhead":
            # timing blocks are not seeds: decide on the CI alone (no p-value)
            r["verdict"] = verdict(r["ci"], 0.0, r["margin"], r["better"], r["unit"])
        else:
            r["verdict"] = verdict(r["ci"], p, r["margin"], r["better"], r["unit"])
    tuned = [arm for arm in finals if arm not in TWINS and arm not in ENSEMBLES]
    sens = {arm: sensitivity(parts["tune"], arm) for arm in tuned}
    diverge = {}
    for arm in tuned:
        runs = [r for r in parts["tune"] if r["arm"] == arm and r["phase"] == "tune"]
        diverge[arm] = (sum(is_divergent(r) for r in runs), len(runs))
    summary = {}
    for arm, runs in finals.items():
        if arm in ENSEMBLES:        # not one model: their own section
            continue
        ms = [run_metrics(r, target) for r in runs]
        summary[arm] = {
            "hparams": runs[0]["hparams"], "seeds": len(runs),
            "test_acc": [m["test_acc"] for m in ms], "val_acc": [m["val_acc"] for m in ms],
            "reach_rate": float(np.mean([m["reached"] for m in ms])),
            "epochs_to_target": [m["epochs_to_target"] for m in ms],
            "seconds_to_target": [m["seconds_to_target"] for m in ms],
            "oscillation": [m["oscillation"] for m in ms],
            "spikes": [m["spikes"] for m in ms], "gap": [m["gap"] for m in ms],
            "gap_at_best": [m["gap_at_best"] for m in ms],
            "test_loss_climb": [m["test_loss_climb"] for m in ms],
            "epoch_min_val_loss": [m["epoch_min_val_loss"] for m in ms],
        }
    return {"baseline": base, "target": target, "rows": rows, "summary": summary,
            "calibration": calibration_rows(finals, base), "twins": twin_rows(finals, target),
            "ensembles": ensemble_rows(finals, base), "robustness": robustness_rows(finals, base),
            "matched": matched_rows(finals, base),
            "sensitivity": sens, "divergence": diverge, "parts": parts, "finals": finals}
