"""Question: under shifted inputs, do the Langevin arms (last iterate, trajectory average) or
the ensembles keep their accuracy, and does their uncertainty grow? (Three Holm families, one
per metric; rows, the report section and its plot.)

Shifted test sets: ``shifts.CONDITIONS`` (Gaussian noise, Gaussian blur and contrast at
severities 1, 3 and 5 of CIFAR-10-C), made from the first ``n`` test images, the same images
for every run. Per predictor the tested value is the mean over the 9 conditions of accuracy
(points, margin +-0.5, higher is better), NLL (% of the reference, margin +-10%, lower is
better) and mean predictive entropy (% of the reference, margin +-10%). Entropy is not a score:
a predictor that knows it is on shifted inputs should be less certain there, but only where it
is also wrong, so its verdict reads "higher" / "lower" rather than better / worse (NLL is the
proper score that rewards the right amount of uncertainty).

Predictors: each Langevin-family arm's final iterate and trajectory average, and each
ensemble; the reference is the strongest baseline's final iterate (a single model).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from difflab.bench.arms import BASELINES, ENSEMBLES, LANGEVIN_ARMS
from difflab.bench.markdown import family_note, mean_of, row_line, verdict_header
from difflab.bench.calibration import SHIFT_PARAMS
from difflab.bench.shifts import CLEAN, CONDITIONS, SHIFT_SEVERITIES, parse_condition
from difflab.bench.stats import ACC_MARGIN, REL_MARGIN, decide, paired_row
from difflab.bench.values import paired_values, shift_value
from difflab.files import save_figure

ROBUSTNESS_TESTS = (("acc", "abs", ACC_MARGIN, "points", +1), ("nll", "rel", REL_MARGIN, "%", -1),
                    ("entropy", "rel", REL_MARGIN, "%", +1))
SOURCE_WORDS = {"final": "final iterate", "average": "trajectory average",
                "ensemble": "ensemble"}
ENTROPY_WORDS = (("better", "higher"), ("worse", "lower"))


def predictors(finals: dict[str, list[dict]], tested: bool = True) -> list[tuple[str, str]]:
    """(arm, source) pairs that hold shift results; ``tested``: only those with verdicts
    (Langevin arms and ensembles), else also the baselines' final iterates."""
    out = [] if tested else [(a, "final") for a in BASELINES if a in finals]
    for arm in [a for a in LANGEVIN_ARMS if a in finals]:
        out += [(arm, "final"), (arm, "average")]
    out += [(e, "ensemble") for e in ENSEMBLES if e in finals]
    return [(a, s) for a, s in out if any(shift_value(r, s, "acc") is not None
                                          for r in finals[a])]


def robustness_rows(finals: dict[str, list[dict]], base: str) -> list[dict]:
    """Rows of the three families (Holm within each metric); [] without shift results."""
    if not any(shift_value(r, "final", "acc") is not None for r in finals.get(base, [])):
        return []
    rows = []
    for metric, kind, margin, unit, better in ROBUSTNESS_TESTS:
        family = []
        for arm, source in predictors(finals):
            pairs = paired_values(finals[arm], finals[base],
                                  lambda r: shift_value(r, source, metric),
                                  lambda r: shift_value(r, "final", metric))
            row = paired_row(arm, "robustness", metric, base, pairs, kind, margin, unit, better)
            row["source"] = source
            family.append(row)
        decide(family)
        if metric == "entropy":
            for r in family:
                for old, new in ENTROPY_WORDS:
                    r["verdict"] = r["verdict"].replace(old, new)
        rows += family
    return rows


def _short(condition: str) -> str:
    kind, severity = parse_condition(condition)
    return {"gaussian_noise": "noise", "gaussian_blur": "blur", "contrast": "contrast"}[kind] \
        + f" {severity}"


def robustness_section(result: dict) -> list[str]:
    rows, finals = result["robustness"], result["finals"]
    out = ["## Robustness under shifted inputs", ""]
    if not rows:
        return out + ["No shift results in these records (results written before the shifted "
                      "test sets were added).", ""]
    n = next(r["shift"]["n"] for r in finals[result["baseline"]] if "shift" in r)
    def params(kind: str) -> str:
        return " / ".join(f"{SHIFT_PARAMS[kind][s - 1]:g}" for s in SHIFT_SEVERITIES)

    out += [f"The first {n} test images, corrupted offline and deterministically (one fixed "
            "seed per condition, the same images for every run) with CIFAR-10-C-style Gaussian "
            f"noise (std {params('gaussian_noise')} on [0, 1] pixels), Gaussian blur (sigma "
            f"{params('gaussian_blur')} px) and contrast reduction (factor "
            f"{params('contrast')}), severities {' / '.join(map(str, SHIFT_SEVERITIES))} of "
            "Hendrycks & Dietterich (2019); 'clean' is the same images unshifted. Mean over "
            "seeds.", "", "Accuracy (%):", ""]
    header = ["clean"] + [_short(c) for c in CONDITIONS] + ["mean shifted"]
    out += ["| predictor | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    shown = predictors(finals, tested=False)
    for arm, source in shown:
        cells = [mean_of([shift_value(r, source, "acc", c) for r in finals[arm]], 1)
                 for c in (CLEAN,) + CONDITIONS]
        cells.append(mean_of([shift_value(r, source, "acc") for r in finals[arm]], 1))
        out.append(f"| {arm} ({SOURCE_WORDS[source]}) | " + " | ".join(cells) + " |")
    out += ["", "NLL and mean predictive entropy (nats; uniform over 10 classes = 2.303), clean "
            "and mean over the shifted conditions:", "",
            "| predictor | NLL clean | NLL shifted | entropy clean | entropy shifted |",
            "|---|---|---|---|---|"]
    for arm, source in shown:
        cells = [mean_of([shift_value(r, source, m, c) for r in finals[arm]], 3)
                 for m in ("nll", "entropy") for c in (CLEAN, None)]
        out.append(f"| {arm} ({SOURCE_WORDS[source]}) | " + " | ".join(cells) + " |")
    out += ["", f"Verdicts against the strongest baseline's final iterate ({result['baseline']}) "
            "on the mean over the 9 shifted conditions, paired by seed; diff = predictor - "
            f"baseline: accuracy in points (margin +-{ACC_MARGIN}), NLL and entropy in % of the "
            f"baseline (margin +-{REL_MARGIN:g}%); 95% paired bootstrap CI, exact sign-flip p, "
            "Holm within each metric (three families). Entropy verdicts say higher / lower, not "
            "better / worse."]
    for metric, *_ in ROBUSTNESS_TESTS:
        family = [r for r in rows if r["metric"] == metric]
        out += ["", f"{metric}: " + family_note(family), ""]
        out += verdict_header(f"{metric} under shift", "baseline")
        out += [row_line(r, f"{SOURCE_WORDS[r['source']]}: {metric} vs {r['vs']}")
                for r in family]
    return out + [""]


def robustness_plot(result: dict, out: Path) -> str | None:
    """Accuracy against severity per corruption kind (mean over seeds); the file name."""
    finals = result["finals"]
    shown = predictors(finals, tested=False)
    if not result["robustness"] or not shown:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(parse_condition(c)[0] for c in CONDITIONS))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds) + 3, 4), sharey=True)
    for ax, kind in zip(np.atleast_1d(axes), kinds):
        conds = [CLEAN] + [c for c in CONDITIONS if parse_condition(c)[0] == kind]
        xs = [parse_condition(c)[1] for c in conds]
        for i, (arm, source) in enumerate(shown):
            ys = [np.mean([v for v in (shift_value(r, source, "acc", c) for r in finals[arm])
                           if v is not None] or [np.nan]) for c in conds]
            ax.plot(xs, ys, marker="o", ms=3, label=f"{arm} ({SOURCE_WORDS[source]})",
                    ls="--" if source != "final" else "-", color=plt.cm.tab20(i % 20))
        ax.set_title(kind)
        ax.set_xlabel("severity (0 = clean)")
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (%)")
    np.atleast_1d(axes)[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Accuracy under shifted inputs (mean over seeds)")
    fig.tight_layout()
    save_figure(fig, out / "robustness.png")
    plt.close(fig)
    return "robustness.png"
