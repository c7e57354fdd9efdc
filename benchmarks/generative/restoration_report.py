"""The tables of ``restoration_quality.py``'s results (Markdown, as pasted into BENCHMARKS.md):
per task, every method's PSNR, SSIM, FID and s/image; the issue-14 acceptance per task; the
interleaved speed comparison; and ``merge``, one report from several JSON files of one
configuration run side by side."""
from __future__ import annotations

import json

import numpy as np

import restoration_quality as rq


def mean_interval(values, digits: int = 2) -> str:
    """``mean +- half``: the mean and 1.96 standard errors (a normal-approximation 95% interval)."""
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():+.{digits}f} +- {half:.{digits}f}"


def table(name, rows) -> str:
    lines = [f"#### {name}", "", "| method | NFE (VJP) | PSNR | SSIM | FID | s/image |",
             "|---|---|---|---|---|---|"]
    for key, r in rows.items():
        if "fid" not in r:
            continue
        nfe = "-" if not r["nfe"] else f"{r['nfe']}" + (f" ({r['vjp']})" if r["vjp"] else "")
        lines.append(f"| {key.split(' @ ')[0]} | {nfe} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{r['fid']:.2f} | {r['seconds_per_image']:.4f} |")
    if "diffusers RePaint (defaults)" in rows:
        d = rows["diffusers RePaint (defaults)"]
        k = d["n"]
        lines += ["", f"On the first {k} images (diffusers RePaint at its defaults is run on these "
                  "only; PSNR / SSIM over the same images):", "",
                  "| method | NFE | PSNR | SSIM | s/image |", "|---|---|---|---|---|"]
        for key, r in rows.items():
            if r["nfe"] and "per_image" not in key:
                p = np.mean(r["psnr_per_image"][:k])
                s = np.mean(r["ssim_per_image"][:k])
                lines.append(f"| {key.split(' @ ')[0]} | {r['nfe']} | {p:.2f} | {s:.3f} | "
                             f"{r['seconds_per_image']:.4f} |")
    return "\n".join(lines)


def acceptance(tasks) -> str:
    """Per task: difflab's best (by FID, by PSNR; any NFE) against the best classical method (A^+ y
    where there is none: colorization), difflab's DDRM against deepinv's at equal NFE, and
    difflab's best at RePaint's NFE against diffusers' RePaint. NFE: the counted network calls
    per image (a mean row of 10 draws at ``--nfe 10`` counts 100)."""
    def label(key, r):
        return f"{key.split(' @ ')[0]} @ {r['nfe']}" if r["nfe"] else key

    def best_row(rows, names, key, sign, nfe=None):
        """(value, label, row) of the best row of ``names`` by ``key``, None if there is none."""
        found = [(sign * r[key], label(k, r), r) for k, r in rows.items()
                 if "fid" in r and k.split(" @ ")[0] in names and nfe in (None, r["nfe"])]
        value, name, row = min(found, key=lambda f: f[:2]) if found else (None, None, None)
        return (None if value is None else sign * value), name, row

    def best(rows, names, key, sign, nfe=None):
        return best_row(rows, names, key, sign, nfe)[:2]

    def rows_of(rows, method):
        return {r["nfe"]: r for k, r in rows.items() if k.split(" @ ")[0] == method and "fid" in r}

    lines = ["| task | FID: difflab best / classical best | PSNR: difflab best / classical best "
             "| DDRM PSNR, FID: difflab / deepinv (NFE) | vs diffusers RePaint at its NFE "
             "(PSNR, FID) |", "|---|---|---|---|---|"]
    ours = [m for m in rq.DIFFUSION if m.startswith("difflab")]
    for name, rows in tasks.items():
        classical = rq.CLASSICAL[rq.make_kind(name)] or ("A^+ y",)
        f_us, f_us_m = best(rows, ours, "fid", 1)
        f_cl, f_cl_m = best(rows, classical, "fid", 1)
        p_us, p_us_m, p_us_row = best_row(rows, ours, "psnr", -1)
        p_cl, p_cl_m, p_cl_row = best_row(rows, classical, "psnr", -1)
        if f_us is None:  # a run of peers only (say, a method subset run in parallel)
            cells = ["-", "-"]
        else:
            gain = np.subtract(p_us_row["psnr_per_image"], p_cl_row["psnr_per_image"])
            cells = [f"{f_us:.2f} ({f_us_m}) / {f_cl:.2f} ({f_cl_m}): "
                     f"{'better' if f_us < f_cl else 'worse'}",
                     f"{p_us:.2f} ({p_us_m}) / {p_cl:.2f} ({p_cl_m}): "
                     f"{'better' if p_us > p_cl else 'worse'} (paired {mean_interval(gain)} dB)"]
        ours_ddrm, theirs = rows_of(rows, "difflab DDRM"), rows_of(rows, "deepinv DDRM")
        cells.append("; ".join(f"{ours_ddrm[n]['psnr']:.2f} / {theirs[n]['psnr']:.2f}, "
                               f"{ours_ddrm[n]['fid']:.2f} / {theirs[n]['fid']:.2f} ({n})"
                               for n in sorted(set(ours_ddrm) & set(theirs))) or "-")
        verdicts = []
        for n, rp in sorted(rows_of(rows, "diffusers RePaint").items()):
            p, _ = best(rows, ours, "psnr", -1, n)
            f, _ = best(rows, ours, "fid", 1, n)
            if p is not None:
                both = p > rp["psnr"] and f < rp["fid"]
                verdicts.append(f"{p:.2f} / {rp['psnr']:.2f}, {f:.2f} / {rp['fid']:.2f} ({n}): "
                                f"{'better on both' if both else 'not both'}")
        cells.append("; ".join(verdicts) or "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(res) -> str:
    lines = ["| task | images x NFE | difflab DDNM | difflab DDRM | deepinv DDRM | deepinv DiffPIR "
             "| deepinv DDRM / difflab DDRM | deepinv DiffPIR / difflab DDNM |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        m = r["median_s_per_image"]
        lines.append(f"| {name} | {r['n']} x {r['nfe']} | {m['difflab DDNM'] * 1e3:.1f} ms | "
                     f"{m['difflab DDRM'] * 1e3:.1f} ms | {m['deepinv DDRM'] * 1e3:.1f} ms | "
                     f"{m['deepinv DiffPIR'] * 1e3:.1f} ms | "
                     f"{r['deepinv DDRM / difflab DDRM']:.2f}x | "
                     f"{r['deepinv DiffPIR / difflab DDNM']:.2f}x |")
    return "\n".join(lines)


def report(results) -> None:
    n, data = results["config"]["n"], results["config"].get("data", "mnist")
    print(f"\n### Quality ({n} {data} images; FID of the clean images themselves: "
          f"{results['clean_fid']:.2f})\n")
    for name, rows in results["tasks"].items():
        print(table(name, rows) + "\n")
    print("### Against the acceptance (issue 14)\n\n" + acceptance(results["tasks"]) + "\n")
    if results["speed"]:
        print("### Speed (interleaved; medians of s/image, ratios: medians of within-round "
              "ratios)\n\n" + speed_table(results["speed"]))
    print(f"\nwall time {results['wall_seconds'] / 60:.1f} min")


def merge(paths, out=None) -> None:
    """One report from several JSON files of the same configuration (say, task subsets or method
    subsets run in parallel, or other NFE): rows and speed results joined (a row in a later file
    replaces the same row of an earlier one), wall time = the longest."""
    runs = []
    for path in paths:
        with open(path) as fh:
            runs.append(json.load(fh))
    keys = ("n", "seed", "batch", "run", "data")  # NFE may differ: rows are keyed by it
    for r in runs[1:]:
        diff = [k for k in keys if r["config"].get(k, "mnist" if k == "data" else None)
                != runs[0]["config"].get(k, "mnist" if k == "data" else None)]
        if diff:
            raise SystemExit(f"{paths[0]} and another file differ in {', '.join(diff)}")
    nfe = sorted({n for r in runs for n in r["config"]["nfe"]})
    merged = {"config": {**runs[0]["config"], "nfe": nfe}, "clean_fid": runs[0]["clean_fid"],
              "tasks": {}, "speed": {}, "wall_seconds": max(r["wall_seconds"] for r in runs),
              "merged_from": list(paths)}
    for r in runs:
        for task, rows in r["tasks"].items():
            merged["tasks"].setdefault(task, {}).update(rows)
        merged["speed"].update(r["speed"])
    merged["tasks"] = {t: merged["tasks"][t] for t in rq.TASKS if t in merged["tasks"]}
    report(merged)
    if out:
        with open(out, "w") as fh:
            json.dump(merged, fh, indent=1)
