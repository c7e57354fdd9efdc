"""Benchmark report (Markdown + PNG) generated from the results file alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from difflab.bench.analysis import (ACC_MARGIN, ECE_MARGIN, REL_MARGIN, TARGET_FRACTION,
                                    calibration_value, split_records, verdict_rows)
from difflab.bench.arms import ENSEMBLES
from difflab.bench.ensemble_analysis import ensemble_section
from difflab.bench.markdown import fmt, mean_std, row_line
from difflab.bench.matched import matched_section
from difflab.bench.records import read_records
from difflab.bench.plan import final_val_acc
from difflab.bench.robustness import robustness_plot, robustness_section
from difflab.files import save_figure, write_atomic

QUESTION_TEXT = {"accuracy": "final test accuracy (points)",
                 "speed": "epochs to target (% of baseline)",
                 "stability": "last-epoch loss std (% of baseline)",
                 "overfitting": "train-minus-test gap (points)",
                 "overhead": "step() time vs SGD (%)"}


def _sensitivity_words(s: dict, base_width: float | None) -> str:
    """Plain words for the width difference; differences below one grid step are not resolved."""
    if not s or base_width is None:
        return "-"
    diff = s["width"] - base_width
    if abs(diff) < max(s["grid_step"], 1e-9):
        return "no difference at the grid's resolution"
    return f"{'wider' if diff > 0 else 'narrower'} by {abs(diff):.2f} decades (one seed, no CI)"


def _answers(rows: list[dict]) -> list[str]:
    """One plain sentence per question and Langevin-family arm, from the verdict rows."""
    out = ["## Answers in plain words", ""]
    for question in ("accuracy", "speed", "stability", "overfitting", "overhead"):
        parts = [f"{r['arm']}: {r['verdict']} ({r['diff']:+.2f} {r['unit']}, CI "
                 f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}])"
                 for r in rows if r["question"] == question]
        if parts:
            out.append(f"- **{question}** vs {[r for r in rows if r['question'] == question][0]['vs']}"
                       f" — " + "; ".join(parts) + ".")
    return out + [""]


def _calibration_section(result: dict) -> list[str]:
    finals, rows = result["finals"], result["calibration"]
    if not rows:
        return ["## Calibration", "", "Not recorded in these results (final runs written "
                "before calibration was added to the records).", ""]
    out = ["## Calibration", "",
           "Test-set accuracy, NLL, Brier score and ECE (15 equal-width bins, in points) of the "
           "final iterate, and of the averaged predictions: for the Langevin family (and the "
           "noiseless twins) the trajectory average, the mean of the test softmax probabilities "
           "over the last epoch's iterates (fixed thinning); for the ensemble arms the ensemble "
           "(next section). Lower is better except accuracy. Mean +- std over seeds.", "",
           "| arm | seeds | acc % | NLL | Brier | ECE pts | averaged: acc % | NLL | Brier | "
           "ECE pts | averaged predictions |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, runs in finals.items():
        src = "ensemble" if arm in ENSEMBLES else "average"
        cells = [mean_std([calibration_value(r, s, m) for r in runs], 3)
                 for s in ("final", src) for m in ("acc", "nll", "brier", "ece")]
        cal = [(r.get("calibration") or {}).get(src) or {} for r in runs]
        counts = [c.get("samples", c.get("members")) for c in cal]
        counts = [v for v in counts if v is not None]
        what = ("-" if not counts else f"{counts[0]} iterates" if src == "average"
                else f"{counts[0]} members")
        out.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + f" | {what} |")
    out += ["", f"Verdicts against the strongest baseline's final iterate ({result['baseline']}), "
            f"paired by seed; diff = arm - baseline; NLL and Brier relative (% of the baseline, "
            f"margin +-{REL_MARGIN:g}%), ECE in points (margin +-{ECE_MARGIN:g}); 95% paired "
            "bootstrap CI; exact sign-flip p, Holm-corrected over this table (its own family).",
            "", "| arm | iterate: metric | arm | baseline | diff | 95% CI | d_z | n | p (Holm) | "
            "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = ("final" if r["source"] == "final" else "trajectory average") + f": {r['metric']}"
        out.append(row_line(r, label))
    return out + [""]


def _twin_section(result: dict) -> list[str]:
    rows = result["twins"]
    out = ["## Noise isolated: noisy arm vs its noiseless twin", ""]
    if not rows:
        return out + ["No twin runs in these results.", ""]
    out += ["Each twin is the same optimizer with temperature 0 (langevin_twin = plain SGD "
            "steps, sghmc_twin = SGD with momentum 0.9), run at the partner's selected learning "
            "rate on the same seeds (same initialization and data order), so the paired "
            "difference is the effect of the noise alone. diff = noisy - twin; accuracy and gap "
            f"in points (margin +-{ACC_MARGIN}), final-iterate test NLL in % of the twin "
            f"(margin +-{REL_MARGIN:g}%); Holm over this table.", "",
            "| arm | metric vs twin | arm | twin | diff | 95% CI | d_z | n | p (Holm) | "
            "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(row_line(r, f"{r['metric']} vs {r['vs']}"))
    return out + [""]


def _plots(result: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    finals = result["finals"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm, runs in finals.items():
        if arm in ENSEMBLES:        # not one model's curve: their members one after another
            continue
        x = runs[0]["curve"]["epoch"]
        for ax, key, scale in ((axes[0], "val_acc", 100), (axes[1], "train_loss", 1),
                               (axes[2], "test_loss", 1)):
            ys = np.array([[np.nan if v is None else v * scale for v in r["curve"][key]]
                           for r in runs], float)
            line, = ax.plot(x, np.nanmean(ys, 0), label=arm)
            ax.fill_between(x, np.nanmin(ys, 0), np.nanmax(ys, 0), alpha=0.15,
                            color=line.get_color())
    axes[0].axhline(100 * result["target"], color="k", ls=":", lw=1, label="speed target")
    for ax, title in zip(axes, ("validation accuracy (%)", "train loss (epoch mean)",
                                "test loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle("Final runs: mean over seeds, band = min..max across seeds")
    fig.tight_layout()
    save_figure(fig, out / "learning_curves.png")
    plt.close(fig)
    names.append("learning_curves.png")

    tune = result["parts"]["tune"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm in finals:
        runs = [r for r in tune if r["arm"] == arm and r["phase"] == "tune"]
        groups: dict = {}
        for r in runs:
            knob = tuple((k, v) for k, v in sorted(r["hparams"].items()) if k != "lr")
            groups.setdefault(knob, []).append((r["hparams"]["lr"], 100 * final_val_acc(r)))
        for knob, pts in groups.items():
            pts.sort()
            label = arm + ("" if not knob else " " + ",".join(f"{k}={v:g}" for k, v in knob))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation accuracy (%)")
    ax.set_title("Sensitivity over the tuning grid (tuning seed)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "sensitivity.png")
    plt.close(fig)
    names.append("sensitivity.png")

    lang = [r for r in tune if r["arm"] == "langevin"]
    if lang:
        lrs = sorted({r["hparams"]["lr"] for r in lang})
        ds = sorted({r["hparams"]["temperature_n"] for r in lang})
        grid = np.full((len(ds), len(lrs)), np.nan)
        for r in lang:
            grid[ds.index(r["hparams"]["temperature_n"]), lrs.index(r["hparams"]["lr"])] = \
                100 * final_val_acc(r)
        fig, ax = plt.subplots(figsize=(6, 4))
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(ds)), [f"{v:g}/N" for v in ds])
        for i in range(len(ds)):
            for j in range(len(lrs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w",
                            fontsize=8)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("temperature D")
        ax.set_title("Langevin: final validation accuracy (%)")
        fig.colorbar(im)
        fig.tight_layout()
        save_figure(fig, out / "heatmap_langevin.png")
        plt.close(fig)
        names.append("heatmap_langevin.png")
    shift_plot = robustness_plot(result, out)
    return names + ([shift_plot] if shift_plot else [])


def write_report(results: str | Path, out: str | Path, keys: set[str] | None = None) -> Path:
    """Read the JSONL results, write ``report.md`` and PNG plots into ``out``; return the path.

    Malformed lines and duplicate keys are handled by ``read_records`` (skipped / last wins,
    with warnings) and listed at the end of the report; records that cannot make a report
    (none, no final or tuning runs, several sweeps mixed) give a one-line ValueError naming the
    file. ``keys`` (``run_benchmark``: the runs of the current plan): run records with other
    keys, e.g. the final runs of an older plan in a resumed results file, are left out of the
    report and counted at its end."""
    issues: list[str] = []
    records = read_records(results, issues)
    if keys is not None:
        stale = [r for r in records if r.get("kind", "run") == "run" and r["key"] not in keys]
        if stale:
            records = [r for r in records if r.get("kind", "run") != "run" or r["key"] in keys]
            issues.append(f"{len(stale)} run record(s) of another plan (e.g. an earlier "
                          "version's final runs) are kept in the file but left out of this "
                          "report")
    if not records:
        skipped = f" ({len(issues)} malformed line(s) skipped)" if issues else ""
        raise ValueError(f"{results}: no result records{skipped}")
    try:
        return _write_report(records, issues, Path(out))
    except ValueError as e:
        raise ValueError(f"{results}: {e}") from e
    except (KeyError, IndexError, TypeError, ZeroDivisionError, AttributeError) as e:
        # read_records validates every record, so this is a bug; still one line for the CLI
        raise ValueError(f"{results}: cannot build a report from these records "
                         f"({type(e).__name__}: {e})") from e


def busy_seconds(intervals: list[tuple[float, float]], pause: float = 60.0) -> float:
    """Length of the union of (start, end) intervals, where gaps of at most ``pause`` seconds
    count as busy: the wall time of a sweep without the time between its invocations."""
    total, current = 0.0, None
    for start, end in sorted(intervals):
        if current is not None and start <= current[1] + pause:
            current[1] = max(current[1], end)
            continue
        if current is not None:
            total += current[1] - current[0]
        current = [start, end]
    return total + (current[1] - current[0] if current is not None else 0.0)


def _write_report(records: list[dict], issues: list[str], out: Path) -> Path:
    if not split_records(records)["tune"]:
        raise ValueError("no tuning records (the report needs the tuning phase)")
    result = verdict_rows(records)
    parts = result["parts"]
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out)
    runs = parts["tune"] + parts["final"]
    env = runs[0]["env"]
    wall = busy_seconds([(r["timing"]["started"], r["timing"]["finished"]) for r in runs])
    compute = sum(r["timing"]["wall_seconds"] for r in runs)
    meta = parts["meta"][-1] if parts["meta"] else {}
    f = parts["final"][0]
    lines = [f"# Optimizer benchmark: {f['problem']} ({meta.get('budget', '?')} budget)", ""]
    if meta.get("command"):
        lines += ["Command:", "", "```", meta["command"], "```", ""]
    lines += [
        f"- Environment: torch {env['torch']}, CPU {env['cpu']}, {env['threads']} torch "
        f"thread(s) per run, host CPUs {env['host_cpus']}.",
        f"- Runs: {len(parts['tune'])} tuning/grid runs, {len(parts['final'])} final runs; "
        f"summed run time {compute / 60:.1f} min; first start to last finish "
        f"{wall / 60:.1f} min (wall time; pauses of over a minute between runs, e.g. between "
        "the invocations of a resumed sweep, left out).",
        f"- Tuning: {len(parts['tune'])} runs (equal budget per arm, seed 0) on "
        f"{parts['tune'][0]['n_train']} train images for {parts['tune'][0]['epochs']} epochs; "
        "selection on final validation accuracy; heatmap-only runs are never selected.",
        f"- Final runs: {f['n_train']} train images, {f['n_val']} validation, {f['n_test']} test, "
        f"{f['epochs']} epochs, batch {f['batch_size']}, {f['n_params']} parameters.",
        f"- Strongest baseline (highest mean final validation accuracy): "
        f"**{result['baseline']}**; speed target = {TARGET_FRACTION:.0%} of its median final "
        f"validation accuracy = {100 * result['target']:.2f}%.",
        f"- Declared equivalence margins: +-{ACC_MARGIN} accuracy points, +-{REL_MARGIN:g}% for "
        "epochs-to-target, oscillation and step time. CIs: 95% paired bootstrap over seeds; "
        "p: exact paired sign-flip permutation test, Holm-corrected over the whole table.",
        "- Temperatures are given as D x N (N = train size; D = 1/N is the posterior "
        "temperature of the mean loss). tutorial: noise std per step; annealed: eta.", "",
        "## Verdicts", "",
        "| arm | question | metric | arm | baseline | diff (arm - base) | 95% CI | d_z | "
        "p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['arm']} | {r['question']} | {QUESTION_TEXT[r['question']]} vs {r['vs']} | "
            f"{fmt(r['arm_mean'], 3)} | {fmt(r['base_mean'], 3)} | {fmt(r['diff'])} | "
            f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}] | {fmt(r['dz'])} | "
            f"{fmt(r['p_holm'], 3)} | {r['verdict']} |")
    base = result["baseline"]
    base_width = result["sensitivity"].get(base, {}).get("width")
    tested = [r for r in result["rows"] if r["n"]]
    if tested:
        n_min = min(r["n"] for r in tested)
        m = len(tested)
        floor = 2 / 2 ** n_min
        lines += ["", f"Power note: with {n_min} paired seeds the smallest attainable exact "
                  f"permutation p is 2/2^{n_min} = {floor:.4f}; Holm over {m} tests multiplies "
                  f"the smallest by {m}, so the smallest attainable adjusted p is "
                  f"{min(1.0, m * floor):.3f}"
                  + (" — at this budget no comparison can be declared significant, and the "
                     "CIs and effect sizes carry the information." if m * floor >= 0.05 else ".")]
    lines += ["", "Sensitivity (tuning grid, one seed per configuration, so no CI): width in "
              "log10(lr) of the region within 95% of the arm's best validation accuracy, at the "
              "selected value of the arm's second knob; compared with the strongest baseline "
              f"({base}) at the resolution of the grid. Divergent = NaN/inf or final train loss "
              "above the initial loss.", "",
              "| arm | selected hyperparameters | width (decades) | grid step | "
              f"vs {base} | divergent tuning runs |", "|---|---|---|---|---|---|"]
    for arm, s in result["sensitivity"].items():
        d, n = result["divergence"][arm]
        lines.append(f"| {arm} | {result['summary'][arm]['hparams']} | {fmt(s.get('width'))} | "
                     f"{fmt(s.get('grid_step'))} | {_sensitivity_words(s, base_width)} | "
                     f"{d}/{n} |")
    lines += [""] + _answers(result["rows"])
    lines += ["## Final runs (mean +- std over seeds)", "",
              "| arm | seeds | test acc % | val acc % | reach rate | epochs to target | "
              "s to target | last-epoch loss std | spikes | gap % | gap at best % | "
              "test-loss climb | epoch of min val loss |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in result["summary"].items():
        lines.append(
            f"| {arm} | {s['seeds']} | {mean_std(s['test_acc'])} | {mean_std(s['val_acc'])} | "
            f"{s['reach_rate']:.2f} | {mean_std(s['epochs_to_target'])} | "
            f"{mean_std(s['seconds_to_target'], 1)} | {mean_std(s['oscillation'], 4)} | "
            f"{mean_std(s['spikes'], 1)} | {mean_std(s['gap'])} | {mean_std(s['gap_at_best'])} | "
            f"{mean_std(s['test_loss_climb'], 3)} | {mean_std(s['epoch_min_val_loss'])} |")
    lines += [""] + _calibration_section(result) + ensemble_section(result)
    lines += robustness_section(result) + matched_section(result) + _twin_section(result)
    if parts["overhead"]:
        oh = parts["overhead"][-1]
        lines += ["## Step overhead", "",
                  f"{oh['n_params']} parameters, batch {oh['batch_size']}, all optimizers in "
                  "their foreach implementation, interleaved in one process; ratio = median over "
                  "repeats of (arm / SGD) with 95% bootstrap CI.", "",
                  "| arm | step() us | ratio | 95% CI | train step ms | ratio | 95% CI | "
                  "optimizer state KiB |", "|---|---|---|---|---|---|---|---|"]
        for arm, a in oh["arms"].items():
            lines.append(
                f"| {arm} | {1e6 * a['step_seconds']:.0f} | {a['step_ratio']:.2f} | "
                f"[{a['step_ratio_ci'][0]:.2f}, {a['step_ratio_ci'][1]:.2f}] | "
                f"{1e3 * a['train_step_seconds']:.2f} | {a['train_step_ratio']:.2f} | "
                f"[{a['train_step_ratio_ci'][0]:.2f}, {a['train_step_ratio_ci'][1]:.2f}] | "
                f"{a['state_bytes'] / 1024:.0f} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if issues:
        lines += ["## Results file problems", "",
                  f"{len(issues)} problem(s) while reading the results file (malformed lines "
                  "are skipped and their runs redone on resume; of duplicate keys the last "
                  "well-formed record is used):", ""]
        lines += [f"- {m}" for m in issues[:50]]
        lines += ([f"- ... and {len(issues) - 50} more"] if len(issues) > 50 else []) + [""]
    path = write_atomic(out / "report.md", "\n".join(lines))
    return path
