"""Question: at the same training accuracy, does an arm overfit less? (Own Holm family; rows
and the report section.)

A smaller train-test gap at the final epoch can just mean less fitting. Here each comparison
(each Langevin-family arm vs the strongest baseline; each noisy arm vs its noiseless twin) is
made at a common training-accuracy level L: the highest level both sides reach, i.e. the
smaller of the two arms' medians over seeds of their peak training accuracy (accuracy on the
fixed training subset of the final runs' curves). Each run is read at its first evaluation
point whose training accuracy is at least L (``matched_index``); a run whose curve never
reaches L has no value there and is reported as such (its seed drops out of the pairs).

Metrics at that point, lower is better: train-minus-test accuracy gap (points, margin +-0.5)
and test-minus-train loss gap (nats, margin +-0.02). The selected points lie on the evaluation
grid, so the training accuracies there are at or above L and not equal across arms; the table
shows them.
"""
from __future__ import annotations

import numpy as np

from difflab.bench.arms import LANGEVIN_ARMS, TWINS
from difflab.bench.markdown import family_note, mean_std, plain_words, row_line, verdict_header
from difflab.bench.stats import ACC_MARGIN, LOSS_GAP_MARGIN, decide, paired_row

MATCHED_TESTS = (("acc_gap", "points", ACC_MARGIN), ("loss_gap", "nats", LOSS_GAP_MARGIN))


def matched_index(train_acc: list[float], level: float) -> int | None:
    """Index of the first evaluation point with training accuracy >= ``level`` (None if the
    curve never reaches it)."""
    return next((i for i, a in enumerate(train_acc) if a >= level), None)


def peak_train_acc(r: dict) -> float:
    return max(r["curve"]["train_eval_acc"])


def matched_level(runs: list[dict], ref_runs: list[dict]) -> float:
    """The highest training accuracy both arms reach: min of their median peak accuracies."""
    return min(float(np.median([peak_train_acc(r) for r in runs])),
               float(np.median([peak_train_acc(r) for r in ref_runs])))


def at_level(r: dict, level: float) -> dict | None:
    """The run at its first evaluation point at or above ``level`` (None if never): epoch,
    train and test accuracy (points), accuracy gap (points) and loss gap (nats or None)."""
    c = r["curve"]
    i = matched_index(c["train_eval_acc"], level)
    if i is None:
        return None
    train, test = 100 * c["train_eval_acc"][i], 100 * c["test_acc"][i]
    tl, vl = c["train_eval_loss"][i], c["test_loss"][i]
    return {"epoch": c["epoch"][i], "train_acc": train, "test_acc": test,
            "acc_gap": train - test, "loss_gap": None if tl is None or vl is None else vl - tl}


def comparisons(finals: dict[str, list[dict]], base: str) -> list[tuple[str, str]]:
    """(arm, reference) pairs: Langevin arms vs the strongest baseline, noisy arm vs twin."""
    out = [(a, base) for a in LANGEVIN_ARMS if a in finals and base in finals]
    return out + [(p, t) for t, (p, _) in TWINS.items() if t in finals and p in finals]


def _values(runs: list[dict], level: float) -> dict[int, dict | None]:
    return {r["seed"]: at_level(r, level) for r in runs}


def matched_rows(finals: dict[str, list[dict]], base: str) -> list[dict]:
    """The family's rows with Holm and verdicts; each row also carries ``level`` (fraction),
    ``reached`` / ``ref_reached`` as (runs reaching, runs) and the per-side selections."""
    rows = []
    for arm, ref in comparisons(finals, base):
        level = matched_level(finals[arm], finals[ref])
        a, b = _values(finals[arm], level), _values(finals[ref], level)
        for metric, unit, margin in MATCHED_TESTS:
            seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None
                           and a[s][metric] is not None and b[s][metric] is not None)
            pairs = np.array([[a[s][metric], b[s][metric]] for s in seeds], float).reshape(-1, 2)
            row = paired_row(arm, "matched", metric, ref, pairs, "abs", margin, unit, -1)
            row.update(level=level, selected=(a, b),
                       reached=(sum(v is not None for v in a.values()), len(a)),
                       ref_reached=(sum(v is not None for v in b.values()), len(b)))
            rows.append(row)
    return decide(rows)


def _side(selected: dict, key: str, nd: int = 2) -> str:
    return mean_std([v[key] for v in selected.values() if v is not None], nd)


def matched_section(result: dict) -> list[str]:
    rows = result["matched"]
    out = ["## Overfitting at matched training accuracy", ""]
    if not rows:
        return out + ["No comparison possible (no Langevin-family or twin final runs).", ""]
    out += ["Besides the final epoch (verdict table above), each arm is compared with its "
            "reference at a common training accuracy L: the highest level both reach (the "
            "smaller of the two arms' median peak accuracies on the fixed training subset). "
            "Each run is read at its first evaluation point with training accuracy >= L; a run "
            "that never gets there drops out (counted below). Gaps: train-minus-test accuracy "
            "(points) and test-minus-train loss (nats); mean +- std over the runs that reach L.",
            "", "| arm | reference | L % | arm reaches | ref reaches | arm epoch | ref epoch | "
            "arm train acc % | ref train acc % | arm test acc % | ref test acc % |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in [r for r in rows if r["metric"] == MATCHED_TESTS[0][0]]:
        a, b = r["selected"]
        out.append(f"| {r['arm']} | {r['vs']} | {100 * r['level']:.2f} | "
                   f"{r['reached'][0]}/{r['reached'][1]} | "
                   f"{r['ref_reached'][0]}/{r['ref_reached'][1]} | {_side(a, 'epoch')} | "
                   f"{_side(b, 'epoch')} | {_side(a, 'train_acc')} | {_side(b, 'train_acc')} | "
                   f"{_side(a, 'test_acc')} | {_side(b, 'test_acc')} |")
        for name, (k, n) in ((r["arm"], r["reached"]), (r["vs"], r["ref_reached"])):
            if k < n:
                notes.append(f"- {name} never reaches L = {100 * r['level']:.2f}% in {n - k} of "
                             f"its {n} runs (compared with {r['vs'] if name == r['arm'] else r['arm']}).")
    out += [""] + (notes + [""] if notes else [])
    out += [f"Verdicts: diff = arm - reference at L, paired by seed (seeds where both reach L); "
            f"margins +-{ACC_MARGIN} points (accuracy gap) and +-{LOSS_GAP_MARGIN:g} nats (loss "
            "gap); smaller gaps are better. 95% paired bootstrap CI; exact sign-flip p. "
            + family_note(rows), ""]
    out += verdict_header("gap at matched train acc vs reference", "reference")
    out += [row_line(r, f"{r['metric']} at L = {100 * r['level']:.2f}% vs {r['vs']}")
            for r in rows]
    out += ["", "In plain words:", ""]
    out += plain_words(rows, lambda r: f"{r['arm']} vs {r['vs']}, {r['metric']} at "
                       f"{100 * r['level']:.2f}% train acc")
    return out + [""]
