"""Markdown formatting shared by the report's sections: numbers, mean +- std, verdict rows and
the power note of a Holm family."""
from __future__ import annotations

import math

import numpy as np


def fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def mean_std(values, nd=2) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{np.mean(v):.{nd}f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.{nd}f}"


def mean_of(values, nd=2) -> str:
    v = [x for x in values if x is not None]
    return f"{np.mean(v):.{nd}f}" if v else "-"


VERDICT_HEADER = ("| arm | {what} | arm | {ref} | diff | 95% CI | d_z | n | p (Holm) | verdict |\n"
                  "|---|---|---|---|---|---|---|---|---|---|")


def verdict_header(what: str, ref: str = "baseline") -> list[str]:
    return VERDICT_HEADER.format(what=what, ref=ref).split("\n")


def row_line(r: dict, label: str) -> str:
    return (f"| {r['arm']} | {label} | {fmt(r['arm_mean'], 3)} | {fmt(r['base_mean'], 3)} | "
            f"{fmt(r['diff'])} {r['unit']} | [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}] | "
            f"{fmt(r['dz'])} | {r['n']} | {fmt(r['p_holm'], 3)} | {r['verdict']} |")


def family_note(rows: list[dict]) -> str:
    """How small Holm's adjusted p can get in this family (exact sign-flip test)."""
    tested = [r for r in rows if r["n"]]
    if not tested:
        return "No row of this table has paired data."
    n, m = min(r["n"] for r in tested), len(tested)
    floor = min(1.0, m * 2 / 2 ** n)
    return (f"Holm over the {m} tested rows of this table; with {n} paired "
            f"seed{'s' if n != 1 else ''} the smallest "
            f"attainable adjusted p is {m} x 2/2^{n} = {floor:.3f}"
            + (" (no row can be significant at 0.05: read the CIs and effect sizes)."
               if floor >= 0.05 else "."))


def plain_words(rows: list[dict], label) -> list[str]:
    """One bullet per row: label, verdict, effect and CI."""
    return [f"- {label(r)}: **{r['verdict']}** ({r['diff']:+.2f} {r['unit']}, 95% CI "
            f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}], n = {r['n']})" for r in rows]
