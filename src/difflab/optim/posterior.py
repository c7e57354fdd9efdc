"""Posterior samples from an SG-MCMC run and the posterior predictive (Bayesian model average).

A run is ``Langevin`` with ``sgld_hyperparameters``/``sghmc_hyperparameters`` (``sgmcmc.py``:
the N/n scaling and the temperature), optionally ``CyclicalStepSize`` (``cyclical.py``), and one
of these collectors, called after every optimizer step::

    opt = Langevin(model.parameters(), **sgld_hyperparameters(N, step_size=1e-5), seed=0)
    collector = PosteriorCollector(model, SamplingSchedule(burn_in=1000, thinning=50))
    for x, y in loader:
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        collector.step()
    probs = collector.predictive(model, x_test)        # mean of softmax over the samples

The posterior predictive ``p(y given x, data) = E_{theta ~ p(theta given data)} p(y given x,
theta)`` is estimated by ``(1/S) sum_s p(y given x, theta_s)`` over the collected theta_s
(Welling & Teh 2011, section 4: averaging over the chain; Zhang et al. 2020, eq. 2). For
classification the average is over softmax probabilities, for regression over the outputs
(the predictive mean; ``predictive_moments`` adds the variance across samples, the epistemic
part of the predictive variance).

* ``PosteriorCollector`` keeps parameter snapshots on the CPU (at most ``max_snapshots``), so
  the predictive is available on any input later.
* ``PredictiveAverage`` keeps only running mean/variance of the predictions on fixed inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from difflab.optim.cyclical import SamplingSchedule

TASKS = ("classification", "regression")
OVERFLOW_POLICIES = ("drop_oldest", "halve")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"invalid task {task!r} (choose from {', '.join(map(repr, TASKS))})")


def _predict(model: nn.Module, inputs, task: str) -> torch.Tensor:
    """Softmax probabilities over the last dim (classification) or raw outputs (regression)."""
    out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    return out.softmax(-1) if task == "classification" else out


class _Welford:
    """Running mean and sum of squared deviations in float64 (Welford 1962).

    The mean is kept as the float64 running sum divided by the count, so the mean of values
    ``v_1 .. v_S`` is exactly ``(v_1 + ... + v_S) / S`` summed in that order (an ensemble's
    predictive is exactly the mean of its members' softmax); ``m2`` is Welford's update with
    those means."""

    def __init__(self):
        self.count, self.total, self.m2 = 0, None, None

    @property
    def mean(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.count

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.count += 1
        if self.total is None:
            self.total, self.m2 = value.clone(), torch.zeros_like(value)
            return
        old_mean = self.total / (self.count - 1)
        self.total += value
        self.m2 += (value - old_mean) * (value - self.total / self.count)


class PosteriorCollector:
    """Parameter snapshots of ``model`` at the steps a ``SamplingSchedule`` selects.

    Call ``step()`` once after every ``optimizer.step()``: the t-th call (0-based) stores a CPU
    copy of the model's parameters (and buffers, if ``buffers=True``, e.g. BatchNorm
    statistics) when ``schedule.should_collect(t)``. ``collect()`` stores one unconditionally.

    At most ``max_snapshots`` are kept. On overflow, ``"drop_oldest"`` keeps the latest ones;
    ``"halve"`` drops every other kept snapshot and from then on keeps only every 2nd, 4th, ...
    collectible step, so the kept ones stay evenly spread over the whole run: with collectible
    steps numbered c = 0, 1, ... and a stride s (1 at first, doubled at each overflow), exactly
    those with ``(c + 1) % s == 0`` are kept (about max/2 to max of them).

    ``predictive(model, inputs)`` is the posterior predictive on any inputs, for ``model`` or
    any module with the same parameter names; the model's own tensors and train/eval mode are
    restored afterwards. ``state_dict()`` is ``{"snapshots": {name: [S, *shape] tensor},
    "metadata": JSON-able dict}``.
    """

    def __init__(self, model: nn.Module, schedule: SamplingSchedule | None = None, *,
                 max_snapshots: int = 100, overflow: str = "drop_oldest", buffers: bool = True):
        if max_snapshots < 1:
            raise ValueError(f"PosteriorCollector: max_snapshots must be >= 1, got {max_snapshots}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"PosteriorCollector: invalid overflow {overflow!r} (choose from "
                             f"{', '.join(map(repr, OVERFLOW_POLICIES))})")
        if overflow == "halve" and max_snapshots < 2:
            raise ValueError("PosteriorCollector: overflow='halve' needs max_snapshots >= 2")
        self.schedule = schedule if schedule is not None else SamplingSchedule()
        self.max_snapshots, self.overflow = int(max_snapshots), overflow
        tensors = dict(model.named_parameters())
        self.parameter_names = list(tensors)
        if buffers:
            tensors.update((n, b) for n, b in model.named_buffers() if n not in tensors)
        self.names = list(tensors)
        self._source = tensors
        self.steps_seen = 0            # calls of step()
        self.collectible_seen = 0      # steps the schedule (or collect()) offered
        self.stride = 1
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.snapshot_steps: list[int] = []       # optimizer step of each snapshot
        self._collectible_index: list[int] = []   # its c (see class docstring)

    def __len__(self) -> int:
        return len(self.snapshots)

    # -- collecting ----------------------------------------------------------------------------
    def step(self) -> bool:
        """Account for one optimizer step; store a snapshot if the schedule selects it.
        Returns whether a snapshot was stored."""
        t = self.steps_seen
        self.steps_seen += 1
        return self.schedule.should_collect(t) and self._offer(t)

    def collect(self) -> bool:
        """Offer the current parameters regardless of the schedule (overflow rules apply);
        recorded with step ``steps_seen - 1``, the last optimizer step accounted for."""
        return self._offer(self.steps_seen - 1)

    def _offer(self, step: int) -> bool:
        c = self.collectible_seen
        self.collectible_seen += 1
        if (c + 1) % self.stride:
            return False
        if len(self.snapshots) == self.max_snapshots:
            if self.overflow == "drop_oldest":
                self._keep([i for i in range(1, len(self.snapshots))])
            else:
                self.stride *= 2
                self._keep([i for i, ci in enumerate(self._collectible_index)
                            if (ci + 1) % self.stride == 0])
                if (c + 1) % self.stride:
                    return False
        self.snapshots.append({n: t.detach().to("cpu", copy=True)
                               for n, t in self._source.items()})
        self.snapshot_steps.append(step)
        self._collectible_index.append(c)
        return True

    def _keep(self, indices: list[int]) -> None:
        self.snapshots = [self.snapshots[i] for i in indices]
        self.snapshot_steps = [self.snapshot_steps[i] for i in indices]
        self._collectible_index = [self._collectible_index[i] for i in indices]

    def flat_samples(self) -> torch.Tensor:
        """Parameters only, one row per snapshot: ``[S, P]`` in ``parameter_names`` order."""
        if not self.snapshots:
            raise RuntimeError("PosteriorCollector: no snapshots collected yet")
        return torch.stack([torch.cat([s[n].reshape(-1) for n in self.parameter_names])
                            for s in self.snapshots])

    # -- posterior predictive --------------------------------------------------------------------
    @torch.no_grad()
    def predictive_moments(self, model: nn.Module, inputs, *, task: str = "classification",
                           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) variance over the snapshots of the predictions: softmax
        probabilities (``task="classification"``) or outputs (``"regression"``), in eval mode.
        Accumulated in float64 (the mean is the float64 sum over the snapshots, in order,
        divided by their number), returned in ``dtype`` (default: the model output's dtype).
        ``inputs``: a tensor, or a tuple/list of positional arguments."""
        _check_task(task)
        if not self.snapshots:
            raise RuntimeError("PosteriorCollector: no snapshots collected yet")
        named = dict(model.named_parameters())
        named.update((n, b) for n, b in model.named_buffers() if n not in named)
        missing = [n for n in self.names if n not in named]
        if missing:
            raise KeyError(f"PosteriorCollector: model has no tensors named {missing}")
        targets = {n: named[n] for n in self.names}
        for n, t in targets.items():  # copy_ would broadcast a [1, 4] snapshot into [3, 4]
            kept = self.snapshots[0][n]
            if kept.shape != t.shape:
                raise ValueError(f"PosteriorCollector: the snapshots' {n} has shape "
                                 f"{tuple(kept.shape)}, the model's {tuple(t.shape)} (another "
                                 "architecture?)")
        saved = {n: t.detach().clone() for n, t in targets.items()}
        was_training = model.training
        stats, out_dtype = _Welford(), None
        model.eval()
        try:
            for snapshot in self.snapshots:
                for n, t in targets.items():
                    t.copy_(snapshot[n])
                out = _predict(model, inputs, task)
                out_dtype = out.dtype
                stats.add(out)
        finally:
            for n, t in targets.items():
                t.copy_(saved[n])
            model.train(was_training)
        dtype = out_dtype if dtype is None else dtype
        return stats.mean.to(dtype), (stats.m2 / stats.count).to(dtype)

    def predictive(self, model: nn.Module, inputs, *, task: str = "classification",
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """Posterior predictive: mean softmax probabilities (classification) or mean output
        (regression) over the snapshots; see ``predictive_moments``."""
        return self.predictive_moments(model, inputs, task=task, dtype=dtype)[0]

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        snapshots = {}
        for n, t in self._source.items():
            snapshots[n] = (torch.stack([s[n] for s in self.snapshots]) if self.snapshots
                            else torch.empty((0, *t.shape), dtype=t.dtype))
        metadata = dict(names=list(self.names), parameter_names=list(self.parameter_names),
                        steps_seen=self.steps_seen, collectible_seen=self.collectible_seen,
                        stride=self.stride, snapshot_steps=list(self.snapshot_steps),
                        collectible_index=list(self._collectible_index),
                        max_snapshots=self.max_snapshots, overflow=self.overflow,
                        schedule=self.schedule.to_dict())
        return dict(snapshots=snapshots, metadata=metadata)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore snapshots, counters and the saved schedule/limits (as ``torch.optim`` does
        with hyperparameters). The tracked tensor names must match."""
        meta, stacked = state_dict["metadata"], state_dict["snapshots"]
        if list(meta["names"]) != self.names:
            raise ValueError("PosteriorCollector: the state_dict tracks tensors "
                             f"{meta['names']}, this collector {self.names}")
        count = len(meta["snapshot_steps"])
        if len(meta["collectible_index"]) != count or count > int(meta["max_snapshots"]):
            raise ValueError(f"PosteriorCollector: the state_dict has {count} snapshot steps, "
                             f"{len(meta['collectible_index'])} collectible indices and "
                             f"max_snapshots {meta['max_snapshots']!r}: inconsistent")
        for n in self.names:
            want = (count, *self._source[n].shape)
            value = stacked.get(n) if isinstance(stacked, dict) else None
            if not torch.is_tensor(value) or tuple(value.shape) != want \
                    or value.dtype != self._source[n].dtype:
                got = (f"shape {tuple(value.shape)} {value.dtype}" if torch.is_tensor(value)
                       else type(value).__name__)
                raise ValueError(f"PosteriorCollector: state_dict snapshots[{n!r}] must be "
                                 f"{self._source[n].dtype} of shape {want}, got {got}")
        self.snapshots = [{n: stacked[n][i].clone() for n in self.names} for i in range(count)]
        self.snapshot_steps = [int(s) for s in meta["snapshot_steps"]]
        self._collectible_index = [int(c) for c in meta["collectible_index"]]
        self.steps_seen = int(meta["steps_seen"])
        self.collectible_seen = int(meta["collectible_seen"])
        self.stride, self.max_snapshots = int(meta["stride"]), int(meta["max_snapshots"])
        self.overflow = meta["overflow"]
        self.schedule = SamplingSchedule.from_dict(meta["schedule"])


class PredictiveAverage:
    """Running posterior predictive on fixed ``inputs``, without storing parameters.

    Call ``step()`` after every optimizer step; at the steps ``schedule`` selects it evaluates
    ``model`` on ``inputs`` (eval mode, no grad, train/eval mode restored) and updates the
    running mean and variance (float64, Welford 1962) of the softmax probabilities
    (classification) or outputs (regression). With the same schedule and no overflow its
    ``mean``/``variance`` equal ``PosteriorCollector.predictive_moments`` on those inputs.
    ``state_dict`` holds the statistics and counters, not the inputs.
    """

    def __init__(self, model: nn.Module, inputs, schedule: SamplingSchedule | None = None, *,
                 task: str = "classification"):
        _check_task(task)
        self.model, self.inputs, self.task = model, inputs, task
        self.schedule = schedule if schedule is not None else SamplingSchedule()
        self.steps_seen = 0
        self._stats = _Welford()

    @property
    def count(self) -> int:
        return self._stats.count

    @property
    def mean(self) -> torch.Tensor:
        if self._stats.count == 0:
            raise RuntimeError("PredictiveAverage: nothing collected yet")
        return self._stats.mean

    @property
    def variance(self) -> torch.Tensor:
        """Population variance across the collected predictions."""
        if self._stats.count == 0:
            raise RuntimeError("PredictiveAverage: nothing collected yet")
        return self._stats.m2 / self._stats.count

    def step(self) -> bool:
        t = self.steps_seen
        self.steps_seen += 1
        if not self.schedule.should_collect(t):
            return False
        self.update()
        return True

    @torch.no_grad()
    def update(self) -> None:
        """Add the model's current predictions regardless of the schedule."""
        was_training = self.model.training
        self.model.eval()
        try:
            self._stats.add(_predict(self.model, self.inputs, self.task))
        finally:
            self.model.train(was_training)

    def state_dict(self) -> dict:
        empty = torch.empty(0, dtype=torch.float64)
        stats = self._stats
        return dict(mean=empty if stats.mean is None else stats.mean.clone(),
                    total=empty if stats.total is None else stats.total.clone(),
                    m2=empty if stats.m2 is None else stats.m2.clone(),
                    metadata=dict(count=stats.count, steps_seen=self.steps_seen,
                                  task=self.task, schedule=self.schedule.to_dict()))

    def load_state_dict(self, state_dict: dict) -> None:
        meta = state_dict["metadata"]
        _check_task(meta["task"])
        count = meta["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"PredictiveAverage: state_dict count must be an integer >= 0, "
                             f"got {count!r}")
        if count and tuple(state_dict["m2"].shape) != tuple(state_dict["mean"].shape):
            raise ValueError(f"PredictiveAverage: state_dict mean has shape "
                             f"{tuple(state_dict['mean'].shape)}, m2 "
                             f"{tuple(state_dict['m2'].shape)}")
        self.task, self.steps_seen = meta["task"], int(meta["steps_seen"])
        self.schedule = SamplingSchedule.from_dict(meta["schedule"])
        self._stats = _Welford()
        self._stats.count = int(meta["count"])
        if self._stats.count:     # state dicts without "total" (older) hold the mean only
            total = state_dict.get("total")
            self._stats.total = (total.clone() if total is not None and total.numel()
                                 else state_dict["mean"].to(torch.float64) * self._stats.count)
            self._stats.m2 = state_dict["m2"].clone()
