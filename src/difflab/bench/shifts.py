"""Shifted test sets for the robustness question, made offline from the test split, and the
per-condition metrics of a predictor on them.

A condition is a corruption kind of ``calibration.SHIFT_KINDS`` (CIFAR-10-C-style Gaussian
noise, Gaussian blur, contrast reduction; Hendrycks & Dietterich 2019, parameters in
``calibration.SHIFT_PARAMS``) at one of ``SHIFT_SEVERITIES``, applied to the first ``n`` test
images in pixel space ([0, 1], after undoing the standardization) and standardized again with
the training statistics. MNIST and the digits get the same transforms on their one channel.
Every condition draws from its own generator seeded with ``condition_seed(kind, severity)``,
so a shifted set is the same for every arm, seed and process (paired comparisons) and is
rebuilt identically whenever it is needed instead of being stored (at most ``BLOCK_IMAGES``
shifted images in memory at a time: 9 copies of the CIFAR-10 test set would take 1.1 GB).

Every source also gets the condition ``CLEAN``: the same ``n`` test images unshifted, so the
drop under shift is measured on the same images. Per predictor and condition: accuracy, mean NLL (``calibration.nll``) and mean predictive
entropy in nats (``calibration.predictive_entropy``; log 10 = 2.303 is the uniform
distribution over 10 classes).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from difflab.bench import calibration
from difflab.bench.problems import Problem

SHIFT_SEVERITIES = (1, 3, 5)      # of CIFAR-10-C's 1..5: mild, middle, strongest
SHIFT_SEED = 20240607
CONDITIONS = tuple(f"{kind}/{s}" for kind in calibration.SHIFT_KINDS for s in SHIFT_SEVERITIES)
CLEAN = "clean"
SHIFT_METRICS = ("acc", "nll", "entropy")
BLOCK_IMAGES = 20000      # shifted images held at once (CIFAR-10: 246 MB in float32)


def parse_condition(name: str) -> tuple[str, int]:
    """``"gaussian_noise/3"`` -> ("gaussian_noise", 3), ``"clean"`` -> ("clean", 0);
    ValueError for anything else."""
    if name == CLEAN:
        return CLEAN, 0
    kind, sep, severity = name.partition("/") if isinstance(name, str) else ("", "", "")
    if (not sep or kind not in calibration.SHIFT_KINDS or not severity.isdigit()
            or int(severity) not in calibration.SEVERITIES):
        raise ValueError(f"invalid shift condition {name!r} (expected KIND/SEVERITY with KIND "
                         f"in {', '.join(calibration.SHIFT_KINDS)} and SEVERITY in 1..5)")
    return kind, int(severity)


def condition_seed(kind: str, severity: int) -> int:
    """Seed of the generator of one condition (fixed: never depends on a run's seed)."""
    return SHIFT_SEED + 10 * calibration.SHIFT_KINDS.index(kind) + severity


def shifted_inputs(problem: Problem, kind: str, severity: int, n: int | None = None
                   ) -> torch.Tensor:
    """The first ``n`` (default all) standardized test inputs of ``problem`` corrupted by
    ``kind`` at ``severity`` (deterministic, seeded per condition); ``CLEAN``: unchanged."""
    if kind == CLEAN:
        return problem.test_x[:n]
    pixels = problem.to_pixels(problem.test_x[:n])
    generator = torch.Generator().manual_seed(condition_seed(kind, severity))
    shifted = calibration.shift_images(pixels, kind, severity, generator)
    return problem.from_pixels(shifted)


def shift_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict | None:
    """Accuracy, mean NLL and mean predictive entropy of class probabilities; None if any
    probability is not finite (a diverged model)."""
    if not torch.isfinite(probs).all():
        return None
    probs = probs.to(torch.float64)
    out = {"acc": float((probs.argmax(1) == labels).to(torch.float64).mean()),
           "nll": calibration.nll(probs, labels),
           "entropy": float(calibration.predictive_entropy(probs).mean())}
    return out if all(math.isfinite(v) for v in out.values()) else None


Predictor = Callable[[torch.Tensor], torch.Tensor]    # standardized inputs -> probabilities


def evaluate_shifts(problem: Problem, predictors: dict[str, Predictor | None], n: int) -> dict:
    """``{"seed", "n", source: {condition: metrics or None} or None}`` for every predictor
    (None for a predictor that does not exist, e.g. after a divergence) on the first ``n``
    test images, unshifted (``CLEAN``) and under every condition of ``CONDITIONS``.

    Conditions are stacked into blocks of at most ``BLOCK_IMAGES`` images, so each predictor
    (an ensemble or trajectory average loops over its members) runs once per block."""
    n = min(n, problem.test_x.shape[0])
    labels = problem.test_y[:n]
    out: dict = {"seed": SHIFT_SEED, "n": n}
    per_source: dict[str, dict | None] = {s: ({} if f is not None else None)
                                          for s, f in predictors.items()}
    names = (CLEAN,) + CONDITIONS
    per_block = max(1, BLOCK_IMAGES // n)
    for start in range(0, len(names), per_block):
        block = names[start:start + per_block]
        x = torch.cat([shifted_inputs(problem, *parse_condition(c), n) for c in block])
        for source, predict in predictors.items():
            if predict is None:
                continue
            probs = predict(x)
            for j, condition in enumerate(block):
                per_source[source][condition] = shift_metrics(probs[j * n:(j + 1) * n], labels)
    out.update(per_source)
    return out
