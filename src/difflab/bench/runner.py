"""One training run per (problem, arm, hyperparameters, seed) -> one JSON-serializable record.

Common random numbers: for a given seed every arm starts from the same initialization (model
seeded with ``seed``) and sees the same mini-batch order (permutations from a generator seeded
with ``seed``); the Langevin noise comes from the optimizer's own generator (seed
``seed + NOISE_SEED_OFFSET``), so comparisons are paired by seed.

Every field that depends on wall-clock time lives under ``record["timing"]``; everything else is
a deterministic function of the spec (given the torch build and thread count), which is what
lets records from different executors be compared for identity.

The arms live in ``difflab.bench.arms``, the training loop in ``difflab.bench.training``, the
ensembles in ``difflab.bench.ensembles`` and the shifted test sets in ``difflab.bench.shifts``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch

from difflab.bench import calibration
from difflab.bench.arms import (ARM_KNOBS, ARMS, AVERAGED_ARMS, BASELINES, ENSEMBLES,
                                FINAL_ONLY_ARMS, LANGEVIN_ARMS, NOISE_SEED_OFFSET, POSTERIOR_ARMS,
                                RUN_ARMS, TWINS, make_optimizer)
from difflab.bench.ensembles import train_ensemble
from difflab.bench.problems import Problem, load_problem
from difflab.bench.shifts import evaluate_shifts
from difflab.bench.training import Chunked, Trace, evaluate, train, train_batch
from difflab.optim.cyclical import SamplingSchedule
from difflab.optim.normal import kernel_available
from difflab.optim.posterior import PosteriorCollector

__all__ = ["ARMS", "ARM_KNOBS", "AVERAGED_ARMS", "BASELINES", "CALIBRATION_BINS", "ENSEMBLES",
           "FINAL_ONLY_ARMS", "LANGEVIN_ARMS", "NOISE_SEED_OFFSET", "POSTERIOR_ARMS", "RUN_ARMS",
           "TWINS", "TRAJECTORY_SAMPLES", "RunSpec", "hp", "make_optimizer", "environment",
           "evaluate", "train_batch", "calibration_metrics", "trajectory_schedule", "run_one"]

CALIBRATION_BINS = 15
TRAJECTORY_SAMPLES = 10   # default thinning = steps_per_epoch // samples over the last epoch
# RunSpec fields added after results files existed: left out of the key at their default, so
# the keys of older records (tuning runs in particular) stay valid
_KEY_DEFAULTS = {"shift_n": 0, "trajectory_samples": TRAJECTORY_SAMPLES, "members": 1}


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run; ``key`` identifies it in the results file.

    ``shift_n`` > 0: final runs also evaluate their predictors on the first ``shift_n`` test
    images under every shift condition (``shifts.CONDITIONS``). ``trajectory_samples``: about
    how many last-epoch iterates the trajectory average of ``AVERAGED_ARMS`` keeps.
    ``members``: M of an ensemble arm (cycles of the snapshot ensemble, models of the deep
    ensemble); it must divide ``epochs``; 1 for every other arm."""

    problem: str
    arm: str
    hparams: tuple           # sorted (name, value) pairs
    seed: int
    epochs: int
    phase: str               # "tune" | "grid" | "final"
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    batch_size: int = 128
    evals_per_epoch: int = 1
    threads: int = 1
    shift_n: int = 0
    trajectory_samples: int = TRAJECTORY_SAMPLES
    members: int = 1
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        """A spec whose record ``executors.append_record`` would refuse fails here, before
        its run (one-line ValueError naming the field and value)."""
        def bad(name: str, rule: str):
            raise ValueError(f"RunSpec: invalid {name} {getattr(self, name)!r} ({rule})")

        if not isinstance(self.problem, str) or not self.problem:
            bad("problem", "a non-empty string")
        if self.arm not in RUN_ARMS:
            bad("arm", f"choose from {', '.join(RUN_ARMS)}")
        if self.phase not in ("tune", "grid", "final"):
            bad("phase", "choose from tune, grid, final")
        if self.arm in FINAL_ONLY_ARMS and self.phase != "final":
            bad("phase", f"arm {self.arm} runs in the final phase only")
        for name, lo in (("seed", 0), ("epochs", 1), ("batch_size", 1), ("evals_per_epoch", 1),
                         ("threads", 1), ("shift_n", 0), ("trajectory_samples", 1),
                         ("members", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                bad(name, f"an integer >= {lo}")
        if self.arm in ENSEMBLES and self.epochs % self.members:
            bad("members", f"must divide epochs {self.epochs}: the members share the epochs")
        if self.arm not in ENSEMBLES and self.members != 1:
            bad("members", f"1 for a single-model arm like {self.arm}")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "an integer >= 1 or None")
        pairs = self.hparams
        if not isinstance(pairs, tuple) or not all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)
                and math.isfinite(p[1]) for p in pairs):
            bad("hparams", "hp(name=finite number, ...)")
        if not dict(pairs).get("lr", 0) > 0:
            bad("hparams", "needs lr > 0")

    @property
    def key(self) -> str:
        d = asdict(self)
        d.pop("extra")
        for name, default in _KEY_DEFAULTS.items():
            if d[name] == default:
                d.pop(name)
        d["hparams"] = dict(self.hparams)
        return json.dumps(d, sort_keys=True)


def hp(**kwargs) -> tuple:
    """Hyperparameters as the sorted tuple a RunSpec stores."""
    return tuple(sorted(kwargs.items()))


def environment(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "threads": threads, "host_cpus": os.cpu_count(),
            "noise_kernel": "compiled" if kernel_available() else "numpy"}


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict | None:
    """Test NLL, Brier, ECE (``CALIBRATION_BINS`` bins), accuracy and mean predictive entropy
    (nats) of class probabilities; None if any probability is not finite (a diverged model)."""
    if not torch.isfinite(probs).all():
        return None
    probs = probs.to(torch.float64)
    out = {"nll": calibration.nll(probs, labels), "brier": calibration.brier(probs, labels),
           "ece": calibration.ece(probs, labels, bins=CALIBRATION_BINS),
           "acc": float((probs.argmax(1) == labels).to(torch.float64).mean()),
           "entropy": float(calibration.predictive_entropy(probs).mean())}
    return out if all(math.isfinite(v) for v in out.values()) else None


def trajectory_schedule(epochs: int, steps_per_epoch: int,
                        samples: int = TRAJECTORY_SAMPLES) -> SamplingSchedule:
    """The iterates of the trajectory average: the last epoch's steps, thinned to about
    ``samples`` (0-based global steps burn_in + thinning - 1, ...)."""
    return SamplingSchedule(burn_in=(epochs - 1) * steps_per_epoch,
                            thinning=max(1, steps_per_epoch // samples))


def _softmax_of(chunked: Chunked):
    """Predictor: standardized inputs -> float64 softmax of the model's current parameters."""
    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        was_training = chunked.training
        chunked.eval()
        try:
            return chunked(x).softmax(-1).to(torch.float64)
        finally:
            chunked.train(was_training)
    return predict


def _evaluate_final(spec: RunSpec, problem: Problem, chunked: Chunked, trace: Trace,
                    collector: PosteriorCollector | None) -> dict:
    """``calibration`` (and ``shift``) fields of a final record, see ``run_one``."""
    predictors = {"final": None if trace.diverged else _softmax_of(chunked)}
    cal: dict = {"bins": CALIBRATION_BINS, "final": None}
    source = "average" if spec.arm in AVERAGED_ARMS else "ensemble" if spec.arm in ENSEMBLES \
        else None
    if source is not None:
        ok = not trace.diverged and len(collector) > 0
        predictors[source] = ((lambda x: collector.predictive(chunked, x, dtype=torch.float64))
                              if ok else None)
    probs = {s: (f(problem.test_x) if f is not None else None) for s, f in predictors.items()}
    metrics = {s: (calibration_metrics(p, problem.test_y) if p is not None else None)
               for s, p in probs.items()}
    cal["final"] = metrics["final"]
    if source == "average":
        sched = collector.schedule
        cal["average"] = {"samples": len(collector), "thinning": sched.thinning,
                          "from_step": sched.burn_in, "metrics": metrics["average"]}
    elif source == "ensemble":
        cal["ensemble"] = {"kind": spec.arm, "members": len(collector),
                           "epochs_per_member": spec.epochs // spec.members,
                           "metrics": metrics["ensemble"]}
    out = {"calibration": cal}
    if spec.shift_n:
        out["shift"] = evaluate_shifts(problem, predictors, spec.shift_n)
    return out


def run_one(spec: RunSpec, data_dir: str | None = None, on_step=None) -> dict:
    """Train one model (or an ensemble) as described by ``spec`` and return its record.

    Final runs also get ``record["calibration"]``: ``{"bins": 15, "final": {nll, brier, ece,
    acc, entropy} or null, ...}`` with the test metrics of the final iterate and, for
    ``AVERAGED_ARMS``, ``"average"``: the same metrics of the mean of the test softmax
    probabilities over the iterates ``trajectory_schedule`` selects (``PosteriorCollector``),
    plus ``samples``, ``thinning`` and ``from_step``; for ``ENSEMBLES``, ``"ensemble"``: the
    metrics of the ensemble's predictive with ``kind``, ``members`` and ``epochs_per_member``
    ("final" is then the last snapshot / the last member alone). Metrics are null after a
    divergence. With ``spec.shift_n``, ``record["shift"]`` holds ``{"seed", "n", source:
    {condition: {acc, nll, entropy}}}`` for the same predictors (``shifts.evaluate_shifts``).
    ``on_step(model, step)`` (tests) is called after every optimizer step."""
    if torch.get_num_threads() != spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.time()
    problem: Problem = load_problem(spec.problem, None if data_dir is None else str(data_dir),
                                   spec.n_train, spec.n_val, spec.n_test)
    hparams = dict(spec.hparams)
    final_phase = spec.phase == "final"
    trace = Trace(problem, final_phase, spec.epochs, spec.evals_per_epoch, spec.batch_size)
    model = problem.make_model(spec.seed)
    chunked = Chunked(model)
    n_params = sum(p.numel() for p in model.parameters())
    collector = None
    if spec.arm in ENSEMBLES:
        collector = train_ensemble(spec.arm, hparams, spec.seed, spec.members, problem, model,
                                   chunked, trace, on_step)
    else:
        opt = make_optimizer(spec.arm, model.parameters(), hparams, problem.n_train, spec.seed)
        if final_phase and spec.arm in AVERAGED_ARMS:
            collector = PosteriorCollector(
                chunked, trajectory_schedule(spec.epochs, trace.steps_per_epoch,
                                             spec.trajectory_samples), max_snapshots=10 ** 6)

        def after_step(m, step):
            if collector is not None:
                collector.step()
            if on_step is not None:
                on_step(m, step)

        train(model, opt, trace, spec.seed, spec.epochs, after_step=after_step)
    extra = _evaluate_final(spec, problem, chunked, trace, collector) if final_phase else {}
    return {
        "key": spec.key, "problem": spec.problem, "arm": spec.arm, "hparams": hparams,
        "seed": spec.seed, "phase": spec.phase, "epochs": spec.epochs, "n_train": problem.n_train,
        "n_val": problem.val_x.shape[0], "n_test": problem.test_x.shape[0],
        "batch_size": spec.batch_size, "n_params": n_params, "env": environment(spec.threads),
        "initial_loss": trace.initial_loss, "diverged": trace.diverged, "spikes": trace.spikes,
        "last_epoch_loss_std": trace.oscillation(), "curve": trace.curve, **extra,
        "timing": {"train_seconds": trace.train_seconds, "wall_seconds": time.time() - started,
                   "started": started, "finished": time.time()},
    }
