"""Ensembles at the same total epochs as one run of any other arm (``arms.ENSEMBLES``).

With a run length of E epochs and M members (``RunSpec.members``, M divides E):

* ``snapshot`` (Huang et al. 2017): the momentum arm's optimizer (SGD, momentum 0.9) at its
  selected learning rate alpha_0, with the cosine-restart schedule
  ``alpha_0 / 2 * (cos(pi * mod(t, L) / L) + 1)``, ``L = E * steps_per_epoch / M`` (their
  eq. 2, the same formula as cyclical SG-MCMC: ``difflab.optim.CyclicalStepSize``), and a
  parameter snapshot after the last step of each of the M cycles
  (``SamplingSchedule.cyclical(..., samples_per_cycle=1)``). One model, one data order: the
  run's seed.
* ``deep_ensemble`` (Lakshminarayanan et al. 2017): M Adam models at the adam arm's selected
  learning rate, each trained E/M epochs from its own initialization and data order (member k
  uses seed ``seed + MEMBER_SEED_STRIDE * k``; member 0 is the run's seed, the same start as
  every other arm's run of that seed).

In both the members are collected by a ``PosteriorCollector`` and the ensemble's prediction is
its ``predictive``: the mean of the members' softmax probabilities (Huang et al. average the
snapshots' softmax outputs; Lakshminarayanan et al. average the members' predictive
distributions).
"""
from __future__ import annotations

from typing import Callable

from difflab.bench.arms import ENSEMBLES, make_optimizer
from difflab.bench.training import Chunked, Trace, train
from difflab.optim.cyclical import CyclicalStepSize, SamplingSchedule
from difflab.optim.posterior import PosteriorCollector

MEMBER_SEED_STRIDE = 1000


def member_seed(seed: int, k: int) -> int:
    """Seed (initialization and data order) of deep-ensemble member ``k`` of run ``seed``."""
    return seed + MEMBER_SEED_STRIDE * k


def snapshot_schedule(total_steps: int, cycles: int) -> SamplingSchedule:
    """The last step of each of ``cycles`` equal cycles (0-based L - 1, 2L - 1, ...)."""
    return SamplingSchedule.cyclical(total_steps, cycles, samples_per_cycle=1)


def train_ensemble(arm: str, hparams: dict, seed: int, members: int, problem, model,
                   chunked: Chunked, trace: Trace,
                   on_step: Callable[[object, int], None] | None = None) -> PosteriorCollector:
    """Train the ensemble ``arm`` into ``model`` (the record's model: member 0's start) and
    return the collector holding its members (fewer than ``members`` after a divergence)."""
    if arm not in ENSEMBLES:
        raise ValueError(f"unknown ensemble arm {arm!r} (choose from {', '.join(ENSEMBLES)})")
    if trace.epochs % members:
        raise ValueError(f"{arm}: {members} members do not divide {trace.epochs} epochs")
    n = problem.n_train
    if arm == "snapshot":
        total = trace.epochs * trace.steps_per_epoch
        opt = make_optimizer(arm, model.parameters(), hparams, n, seed)
        scheduler = CyclicalStepSize(opt, total, members)
        collector = PosteriorCollector(chunked, snapshot_schedule(total, members),
                                       max_snapshots=members)

        def after_step(m, step):
            collector.step()
            scheduler.step()
            if on_step is not None:
                on_step(m, step)

        train(model, opt, trace, seed, trace.epochs, after_step=after_step)
        return collector
    collector = PosteriorCollector(chunked, max_snapshots=members)
    per = trace.epochs // members
    for k in range(members):
        s = member_seed(seed, k)
        if k:
            model.load_state_dict(problem.make_model(s).state_dict())
        opt = make_optimizer(arm, model.parameters(), hparams, n, s)
        train(model, opt, trace, s, per, epoch_offset=k * per, after_step=on_step)
        if trace.diverged:
            break
        collector.collect()
    return collector
