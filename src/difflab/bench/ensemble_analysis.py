"""Question: does averaging over the Langevin trajectory buy what ensembles buy, at the same
total epochs? (Own Holm family; rows and the report section.)

Predictors compared on the clean test set: the snapshot ensemble and the deep ensemble
(``arms.ENSEMBLES``, M members whose epochs add up to the E epochs of every other run), the
trajectory average of the SG-MCMC arms (``arms.POSTERIOR_ARMS``: langevin, sghmc; the Bayesian
model average over the last epoch's iterates) and the strongest baseline's final iterate (a
single SGD/momentum/Adam model). Rows, all paired by seed:

* each ensemble vs the strongest baseline's single model: does ensembling help here at all;
* each SG-MCMC arm's trajectory average vs each ensemble: is the Langevin average competitive
  with the ensembles that cost the same epochs.

Metrics: test accuracy (points, margin +-0.5, higher is better), NLL and Brier (% of the
reference, margin +-10%, lower is better), ECE (15 bins, points, margin +-1, lower is better).
2 ensembles x 4 metrics + 2 arms x 2 ensembles x 4 metrics = 24 rows, the most an exact
sign-flip test on 10 seeds can carry under Holm (24 x 2/2^10 = 0.047).
"""
from __future__ import annotations

from difflab.bench.arms import ENSEMBLES, POSTERIOR_ARMS
from difflab.bench.markdown import family_note, mean_std, plain_words, row_line, verdict_header
from difflab.bench.stats import ACC_MARGIN, ECE_MARGIN, REL_MARGIN, decide, paired_row
from difflab.bench.values import calibration_value, paired_values

ENSEMBLE_TESTS = (("acc", "abs", ACC_MARGIN, "points", +1), ("nll", "rel", REL_MARGIN, "%", -1),
                  ("brier", "rel", REL_MARGIN, "%", -1), ("ece", "abs", ECE_MARGIN, "points", -1))
SOURCE_WORDS = {"final": "single model", "average": "trajectory average", "ensemble": "ensemble"}


def _compare(finals, arm, source, ref, ref_source) -> list[dict]:
    rows = []
    for metric, kind, margin, unit, better in ENSEMBLE_TESTS:
        pairs = paired_values(finals[arm], finals[ref],
                              lambda r: calibration_value(r, source, metric),
                              lambda r: calibration_value(r, ref_source, metric))
        row = paired_row(arm, "ensembles", metric, ref, pairs, kind, margin, unit, better)
        row.update(source=source, ref_source=ref_source)
        rows.append(row)
    return rows


def ensemble_rows(finals: dict[str, list[dict]], base: str) -> list[dict]:
    """The family's rows with Holm and verdicts ([] without ensemble runs)."""
    ensembles = [e for e in ENSEMBLES if e in finals]
    rows = []
    for e in ensembles:
        rows += _compare(finals, e, "ensemble", base, "final")
    for arm in [a for a in POSTERIOR_ARMS if a in finals]:
        for e in ensembles:
            rows += _compare(finals, arm, "average", e, "ensemble")
    return decide(rows)


def _label(r: dict) -> str:
    return (f"{SOURCE_WORDS[r['source']]}: {r['metric']} vs {r['vs']} "
            f"({SOURCE_WORDS[r['ref_source']]})")


def ensemble_section(result: dict) -> list[str]:
    rows, finals = result["ensembles"], result["finals"]
    out = ["### Ensembles at the same total epochs", "",
           "Part of the calibration question: the trajectory average against ensembles that "
           "cost the same epochs, and the ensembles against the best single model (own Holm "
           "family).", ""]
    if not rows:
        return out + ["No ensemble runs in these results (results written before the snapshot "
                      "and deep ensembles were added, or their base arms momentum/adam were "
                      "not run).", ""]
    runs = next(finals[e] for e in ENSEMBLES if e in finals)
    epochs = runs[0]["epochs"]
    per = runs[0]["calibration"]["ensemble"]["epochs_per_member"]
    m = epochs // per
    out += [f"Every run costs {epochs} epochs. **Snapshot ensemble** (Huang et al. 2017): one "
            f"run of SGD with momentum 0.9 at the momentum arm's selected lr as the peak of "
            f"{m} cosine cycles with restarts of {per} epoch(s) each, the softmax averaged over "
            f"the {m} snapshots taken at the ends of the cycles. **Deep ensemble** "
            f"(Lakshminarayanan et al. 2017): {m} Adam models at the adam arm's selected lr, "
            f"independently initialised and shuffled, each trained {per} epoch(s) "
            f"({m} x {per} = {epochs} epochs in all), softmax averaged. **Trajectory "
            "average**: the SG-MCMC arms' (langevin, sghmc) mean test softmax over the last "
            "epoch's thinned iterates (the Bayesian model average). Clean test set; accuracy in "
            "%, ECE in points; mean +- std over seeds.", "",
            "| predictor | seeds | acc % | NLL | Brier | ECE pts |", "|---|---|---|---|---|---|"]
    table = [(f"{result['baseline']} (single model, strongest baseline)",
              finals[result["baseline"]], "final")]
    table += [(f"{e} ({m} members)", finals[e], "ensemble") for e in ENSEMBLES if e in finals]
    table += [(f"{e}: last member alone", finals[e], "final") for e in ENSEMBLES if e in finals]
    table += [(f"{a} (trajectory average)", finals[a], "average") for a in POSTERIOR_ARMS
              if a in finals]
    for name, rs, source in table:
        cells = [mean_std([calibration_value(r, source, k) for r in rs], 3)
                 for k in ("acc", "nll", "brier", "ece")]
        out.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    out += ["", "Verdicts: diff = predictor - reference, paired by seed; accuracy in points "
            f"(margin +-{ACC_MARGIN}, higher is better), NLL and Brier in % of the reference "
            f"(margin +-{REL_MARGIN:g}%), ECE in points (margin +-{ECE_MARGIN:g}); lower is "
            "better for those three. 95% paired bootstrap CI; exact sign-flip p. "
            + family_note(rows), ""]
    out += verdict_header("predictor: metric vs reference", "reference")
    out += [row_line(r, _label(r)) for r in rows]
    out += ["", "In plain words:", ""]
    out += plain_words(rows, lambda r: f"{r['arm']} {_label(r)}") + [""]
    return out
