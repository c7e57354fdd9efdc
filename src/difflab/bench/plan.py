"""Budgets and the sweep plan: tuning grids (equal, declared budget per arm), the Langevin
lr x D heatmap grid, selection on validation accuracy, and the final runs on fresh seeds.

Tuning budget: 8 configurations per arm in ``standard`` and ``full``. One-dimensional arms use
8 log-spaced learning rates; arms with a second knob (weight decay, temperature, noise std,
eta) use 4 learning rates x 2 values of that knob, i.e. the same 8. The ``grid`` phase adds
the remaining temperatures for the Langevin arm only to draw the lr x D heatmap; those runs are
never used for selection. Selection: highest final validation accuracy (tuning seed), ties to
the smaller lr.

Final runs: the selected configuration of every arm on fresh seeds, plus final-only arms on the
same seeds: the noiseless twins (the partner Langevin arm's lr) and the two ensembles at the
same total epochs (``arms.ENSEMBLES``: the momentum / adam arm's lr; ``ensemble_members``
members of ``final_epochs / ensemble_members`` epochs each). Final runs of tuned arms and
ensembles are also evaluated on ``shift_n_test`` shifted test images per condition.

Planned work and wall time (one torch thread, sequential, quiet host; estimated from the
measured CIFAR-10 costs of 6.6 s per training epoch on 45,000 images and about 0.1 s per 1,000
test-image forward passes):

* ``quick``: 22 tuning runs of 2 epochs on 1,000 images, 36 final runs of 2 epochs on 2,000:
  about 1.5 CPU minutes on CIFAR-10, under 3 minutes wall on a shared host.
* ``standard``: 80 tuning runs of 3 epochs on 10,000 images (about 9 min on CIFAR-10), then
  120 final runs of 6 epochs on the whole train split (8 tuned arms, 2 twins, 2 ensembles of 3
  members x 2 epochs, 10 seeds each): about 2.3 h on CIFAR-10 (training 40 s, evaluation 15-45 s
  per run), 15-20 min on MNIST.
* ``full``: 20 epochs everywhere, ensembles of 5 x 4 epochs, shifts on the whole test set: about
  11 h on CIFAR-10; spread it over workers (``--executor process`` / ``ray``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from difflab.bench.runner import ARMS, ENSEMBLES, TWINS, RunSpec, hp
from difflab.options import BUDGETS

TUNE_SEED = 0
FINAL_SEED0 = 100       # final runs use fresh seeds 100, 101, ...


@dataclass(frozen=True)
class Budget:
    name: str
    tune_epochs: int
    tune_n_train: int | None
    final_epochs: int
    final_n_train: int | None
    final_seeds: int
    n_val: int | None
    n_test: int | None
    evals_per_epoch: int
    lr_points: int           # per one-dimensional arm (two-dimensional arms: lr_points // 2)
    knob_points: int         # values of the second knob used for tuning
    overhead_repeats: int
    trajectory_samples: int = 10   # iterates of the last epoch in the trajectory average
    ensemble_members: int = 1      # M of the ensembles (divides final_epochs)
    shift_n_test: int = 0          # test images per shift condition (0: no shift evaluation)


def get_budget(name: str, problem: str) -> Budget:
    """Budget by name; sizes are stated per problem where the data sets differ."""
    sizes = {"cifar10-cnn": (45000, 5000), "mnist-mlp": (55000, 5000), "digits-mlp": (1297, 250)}
    if not isinstance(problem, str) or problem not in sizes:
        raise ValueError(f"unknown problem {problem!r} (choose from {', '.join(sizes)})")
    full_train, full_val = sizes[problem]
    if name == "quick":
        # a smoke test (3 seeds cannot give verdicts) that must stay under 3 minutes on a
        # shared 2-core host: tuning on 1,000 images, small evaluation sets, 4 averaged
        # iterates, 100 shifted images
        small, small_eval = min(2000, full_train), min(500, full_val)
        return Budget("quick", 2, small // 2, 2, small, 3, small_eval, small_eval, 1,
                      lr_points=3, knob_points=1, overhead_repeats=3, trajectory_samples=4,
                      ensemble_members=2, shift_n_test=100)
    if name == "standard":
        # 10 final seeds: with the exact sign-flip test the smallest two-sided p is 2 / 2^n,
        # and Holm over the 16 tested rows needs p <= 0.05 / 16; n = 6 (p >= 0.031) could
        # never give a verdict, n = 10 (p >= 0.002) can.
        # 6 final epochs (tuning stays at 3 on 10,000 images, so the tuning records and the
        # selection of the 3-epoch reports carry over): 3 ensemble members of 2 epochs, and
        # 6 points on each curve for overfitting at matched training accuracy.
        return Budget("standard", 3, min(10000, full_train), 6, None, 10, None, None, 1,
                      lr_points=8, knob_points=2, overhead_repeats=15, trajectory_samples=10,
                      ensemble_members=3, shift_n_test=2000)
    if name == "full":
        return Budget("full", 20, None, 20, None, 10, None, None, 2,
                      lr_points=8, knob_points=2, overhead_repeats=30, trajectory_samples=10,
                      ensemble_members=5, shift_n_test=10000)
    raise ValueError(f"unknown budget {name!r} (choose from {', '.join(BUDGETS)})")


def _log_grid(lo: float, hi: float, n: int) -> list[float]:
    """n log-spaced values in [lo, hi] rounded to 3 significant digits (stable JSON keys)."""
    if n == 1:
        return [float(f"{np.sqrt(lo * hi):.3g}")]
    return [float(f"{v:.3g}") for v in np.logspace(np.log10(lo), np.log10(hi), n)]


# lr ranges (log10 lo, hi) and second knobs: (name, tuning values, extra heatmap values)
ONE_D = {"sgd": (1e-2 / 3, 1.0), "momentum": (1e-3 / 3, 0.1), "adam": (1e-4, 1e-2 * 3)}
TWO_D = {
    "momentum_wd": ((1e-3, 0.03), "weight_decay", [5e-4, 5e-3], []),
    "langevin": ((1e-2, 0.3), "temperature_n", [1.0, 100.0], [0.01, 0.1, 10.0, 1000.0]),
    "tutorial": ((1e-2, 0.3), "noise_std", [1e-4, 1e-3], []),
    "sghmc": ((1e-3, 0.03), "temperature_n", [1.0, 100.0], []),
    "annealed": ((1e-2, 0.3), "eta", [0.01, 0.3], []),
}


def tuning_configs(arm: str, budget: Budget) -> tuple[list[tuple], list[tuple]]:
    """(configs used for selection, extra heatmap-only configs) for one arm."""
    if arm in ONE_D:
        lo, hi = ONE_D[arm]
        return [hp(lr=lr) for lr in _log_grid(lo, hi, budget.lr_points)], []
    (lo, hi), knob, values, extra = TWO_D[arm]
    n_lr = max(2, budget.lr_points // 2)
    lrs = _log_grid(lo, hi, n_lr)
    if budget.knob_points == 1:
        values, extra = values[:1], (values[1:] + extra)[:1] if arm == "langevin" else []
    tune = [hp(lr=lr, **{knob: v}) for v in values for lr in lrs]
    grid = [hp(lr=lr, **{knob: v}) for v in extra for lr in lrs]
    return tune, grid


def tuning_specs(problem: str, budget: Budget, threads: int = 1,
                 arms: tuple[str, ...] = ARMS) -> list[RunSpec]:
    specs = []
    for arm in arms:
        tune, grid = tuning_configs(arm, budget)
        for phase, configs in (("tune", tune), ("grid", grid)):
            for h in configs:
                specs.append(RunSpec(problem, arm, h, TUNE_SEED, budget.tune_epochs, phase,
                                     budget.tune_n_train, budget.n_val, budget.n_test,
                                     evals_per_epoch=budget.evals_per_epoch, threads=threads))
    return specs


def final_val_acc(record: dict) -> float:
    return record["curve"]["val_acc"][-1]


def select(records: list[dict], arm: str) -> dict | None:
    """Best tuning record of ``arm`` (phase "tune" only) by final validation accuracy."""
    cands = [r for r in records if r["arm"] == arm and r["phase"] == "tune"]
    if not cands:
        return None
    return max(cands, key=lambda r: (final_val_acc(r), -r["hparams"]["lr"]))


def final_specs(problem: str, budget: Budget, records: list[dict], threads: int = 1,
                arms: tuple[str, ...] = ARMS) -> list[RunSpec]:
    specs = []
    for arm in arms:
        best = select(records, arm)
        if best is None:
            raise ValueError(f"no tuning record for arm {arm!r}; run the tuning phase first")
        h = hp(**best["hparams"])
        for s in range(budget.final_seeds):
            specs.append(RunSpec(problem, arm, h, FINAL_SEED0 + s, budget.final_epochs, "final",
                                 budget.final_n_train, budget.n_val, budget.n_test,
                                 evals_per_epoch=budget.evals_per_epoch, threads=threads,
                                 shift_n=budget.shift_n_test,
                                 trajectory_samples=budget.trajectory_samples))
    # noiseless twins: the partner's selected lr and the same seeds, temperature 0
    partners = {s.arm: s for s in specs}
    for twin, (partner, _) in TWINS.items():
        if partner in partners:
            h = hp(lr=dict(partners[partner].hparams)["lr"])
            for s in [s for s in specs if s.arm == partner]:
                specs.append(RunSpec(problem, twin, h, s.seed, s.epochs, "final", s.n_train,
                                     s.n_val, s.n_test, evals_per_epoch=s.evals_per_epoch,
                                     threads=threads, trajectory_samples=s.trajectory_samples))
    # ensembles at the same total epochs: the base arm's selected lr and the same seeds
    for ensemble, base in ENSEMBLES.items():
        if base in partners:
            h = hp(lr=dict(partners[base].hparams)["lr"])
            for s in [s for s in specs if s.arm == base]:
                specs.append(RunSpec(problem, ensemble, h, s.seed, s.epochs, "final", s.n_train,
                                     s.n_val, s.n_test, evals_per_epoch=s.evals_per_epoch,
                                     threads=threads, shift_n=s.shift_n,
                                     members=budget.ensemble_members))
    return specs
