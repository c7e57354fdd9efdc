"""Step-size and sample-collection schedules for SG-MCMC: the cyclical step size of cyclical
SG-MCMC (Zhang, Li, Zhang, Chen & Wilson 2020, "Cyclical Stochastic Gradient MCMC for Bayesian
Deep Learning", ICLR) and which optimizer steps a posterior collector keeps.

| code name            | paper symbol (Zhang et al. 2020)   | meaning                                       |
| -------------------- | ---------------------------------- | --------------------------------------------- |
| ``step``             | k - 1                              | 0-based index of the optimizer step           |
| ``total_steps``      | K                                  | number of steps of the whole run              |
| ``cycles``           | M                                  | number of cycles                              |
| ``cycle_length``     | ceil(K / M)                        | steps per cycle                               |
| ``position``         | mod(k - 1, ceil(K / M))            | index of the step inside its cycle            |
| ``exploration``      | beta                               | fraction of each cycle spent exploring        |
| ``initial_step_size``| alpha_0                            | step size at the start of every cycle         |

Step ``step`` (0-based, the ``step``-th call of ``optimizer.step()``) is the paper's iteration
``k = step + 1``, so eq. (1) reads ``alpha(step) = alpha_0 / 2 * (cos(pi * position / L) + 1)``
with ``L = ceil(K / M)`` and ``position = step mod L``. Past ``total_steps`` the schedule keeps
cycling; when M does not divide K the last cycle is cut short at K.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from difflab.optim.langevin_options import _is_int, _is_real


def cycle_length(total_steps: int, cycles: int) -> int:
    """Steps per cycle, ``ceil(K / M)`` (Zhang et al. 2020, eq. 1)."""
    if not (_is_int(total_steps) and _is_int(cycles)) or total_steps < 1 or cycles < 1:
        raise ValueError(f"cycle_length: need total_steps >= 1 and cycles >= 1, got "
                         f"{total_steps} and {cycles}")
    return -(-total_steps // cycles)


def _exploring(position: int, length: int, exploration: float) -> bool:
    """The paper's test ``r(k) < beta`` with ``r(k) = position / L`` (Zhang et al. 2020, Alg. 1),
    evaluated as written: both sides are the correctly rounded doubles of the exact values, so
    a boundary such as 7/10 vs 0.7 compares as the exact numbers do."""
    return position / length < exploration


def cyclical_step_size(step: int, initial_step_size: float, total_steps: int,
                       cycles: int) -> float:
    """Step size of 0-based step ``step``, Zhang et al. 2020, eq. (1):
    ``alpha_0 / 2 * (cos(pi * mod(step, L) / L) + 1)``, ``L = ceil(total_steps / cycles)``.

    It equals ``alpha_0`` on the first step of every cycle and decreases to
    ``alpha_0 / 2 * (1 - cos(pi / L))`` > 0 on the last one.
    """
    if step < 0:
        raise ValueError(f"cyclical_step_size: step must be >= 0, got {step}")
    length = cycle_length(total_steps, cycles)
    position = step % length
    return initial_step_size / 2.0 * (math.cos(math.pi * position / length) + 1.0)


def in_exploration(step: int, total_steps: int, cycles: int, exploration: float) -> bool:
    """Whether 0-based step ``step`` lies in the exploration stage of its cycle, the first
    fraction ``exploration`` (beta) of the cycle: ``mod(step, L) / L < beta`` (Zhang et al.
    2020, Algorithm 1). In that stage the paper runs the optimizer without noise."""
    length = cycle_length(total_steps, cycles)
    return _exploring(step % length, length, exploration)


class CyclicalStepSize(LRScheduler):
    """Cyclical step size (Zhang et al. 2020, eq. 1) as a ``torch.optim`` LR scheduler, with the
    exploration/sampling split of their Algorithm 1.

    Each group's ``lr`` at step t is ``cyclical_step_size(t, initial_lr, total_steps, cycles)``.
    With the ``Langevin`` optimizer (groups that have a ``temperature``), the first fraction
    ``exploration`` of every cycle is the paper's exploration stage: the group's temperature is
    set to 0 there (plain SGD / SGD-momentum, no noise is drawn) unless
    ``exploration_noise=True``, and back to the group's initial temperature in the sampling
    stage. Langevin's noise std ``sqrt(2 * lr * D)`` scales with ``lr``, so cSGLD's update
    ``theta - alpha_k grad U + N(0, 2 alpha_k)`` is Langevin with ``lr = alpha_k`` and a
    constant D: the target temperature does not change along the cycle.

    Usage as any scheduler (``optimizer.step()`` then ``scheduler.step()``); step t of the
    optimizer runs with ``scheduler.last_epoch == t``. ``state_dict`` holds only plain numbers;
    the initial lr and temperature live in the optimizer's param groups (``initial_lr``,
    ``initial_temperature``), so restore the optimizer's state as well.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, cycles: int,
                 exploration: float = 0.0, *, exploration_noise: bool = False,
                 last_epoch: int = -1):
        cycle_length(total_steps, cycles)                     # validates both
        if not 0.0 <= exploration < 1.0:
            raise ValueError(f"CyclicalStepSize: exploration must be in [0, 1), got {exploration}")
        for group in optimizer.param_groups:
            if "temperature" not in group:
                continue
            if group.get("temperature_schedule", "constant") != "constant":
                raise ValueError("CyclicalStepSize: the exploration stage sets the temperature; "
                                 "use temperature_schedule='constant'")
            if last_epoch == -1:
                group.setdefault("initial_temperature", group["temperature"])
            elif "initial_temperature" not in group:
                raise KeyError("CyclicalStepSize: resuming (last_epoch >= 0) needs "
                               "'initial_temperature' in every Langevin param group")
        self.total_steps, self.cycles = int(total_steps), int(cycles)
        self.exploration, self.exploration_noise = float(exploration), bool(exploration_noise)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [cyclical_step_size(self.last_epoch, base_lr, self.total_steps, self.cycles)
                for base_lr in self.base_lrs]

    _get_closed_form_lr = get_lr

    def exploring(self) -> bool:
        """Whether the coming optimizer step (``last_epoch``) is in the exploration stage."""
        return in_exploration(self.last_epoch, self.total_steps, self.cycles, self.exploration)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        noise_off = self.exploring() and not self.exploration_noise
        for group in self.optimizer.param_groups:
            if "temperature" in group:
                group["temperature"] = 0.0 if noise_off else group["initial_temperature"]


@dataclass(frozen=True)
class SamplingSchedule:
    """Which 0-based optimizer steps a posterior collector keeps (after that step's update).

    Without cycles (``cycle_length=None``): steps ``t >= burn_in`` with
    ``(t - burn_in + 1) % thinning == 0``, i.e. the last step of each block of ``thinning``
    steps after burn-in: ``burn_in + thinning - 1, burn_in + 2 * thinning - 1, ...``.

    With cycles of ``cycle_length`` L (cyclical SG-MCMC, Zhang et al. 2020, Algorithm 1:
    samples are collected in the sampling stage only): step t with ``position = t mod L`` is
    kept iff ``t >= burn_in``, ``position / L >= exploration`` (sampling stage, the same test as
    ``in_exploration``), ``(L - 1 - position) % thinning == 0`` (thinning counted back from the
    cycle's last step, where the step size is smallest), and, if ``samples_per_cycle`` is set,
    ``(L - 1 - position) // thinning < samples_per_cycle`` (only the last few of each cycle).
    """

    burn_in: int = 0
    thinning: int = 1
    cycle_length: int | None = None
    exploration: float = 0.0
    samples_per_cycle: int | None = None

    def __post_init__(self):
        for name in ("burn_in", "thinning", "cycle_length", "samples_per_cycle"):
            value = getattr(self, name)
            if not (_is_int(value) or value is None and name in ("cycle_length",
                                                                   "samples_per_cycle")):
                raise ValueError(f"SamplingSchedule: {name} must be an integer, got {value!r}")
        if not _is_real(self.exploration) or not math.isfinite(self.exploration):
            raise ValueError(f"SamplingSchedule: exploration must be a number in [0, 1), got "
                             f"{self.exploration!r}")
        if self.burn_in < 0 or self.thinning < 1:
            raise ValueError(f"SamplingSchedule: need burn_in >= 0 and thinning >= 1, got "
                             f"{self.burn_in} and {self.thinning}")
        if self.cycle_length is None:
            if self.exploration != 0.0 or self.samples_per_cycle is not None:
                raise ValueError("SamplingSchedule: exploration and samples_per_cycle need "
                                 "cycle_length")
            return
        if self.cycle_length < 1 or not 0.0 <= self.exploration < 1.0:
            raise ValueError(f"SamplingSchedule: need cycle_length >= 1 and exploration in "
                             f"[0, 1), got {self.cycle_length} and {self.exploration}")
        if self.samples_per_cycle is not None and self.samples_per_cycle < 1:
            raise ValueError("SamplingSchedule: samples_per_cycle must be >= 1 (or None)")

    @classmethod
    def cyclical(cls, total_steps: int, cycles: int, exploration: float = 0.0, *,
                 thinning: int = 1, samples_per_cycle: int | None = None,
                 burn_in: int = 0) -> "SamplingSchedule":
        """The schedule matching ``CyclicalStepSize(total_steps, cycles, exploration)``."""
        return cls(burn_in=burn_in, thinning=thinning,
                   cycle_length=cycle_length(total_steps, cycles), exploration=exploration,
                   samples_per_cycle=samples_per_cycle)

    def should_collect(self, step: int) -> bool:
        """Whether the parameters after 0-based optimizer step ``step`` are kept."""
        if step < self.burn_in:
            return False
        if self.cycle_length is None:
            return (step - self.burn_in + 1) % self.thinning == 0
        length = self.cycle_length
        position = step % length
        if _exploring(position, length, self.exploration):
            return False
        from_end = length - 1 - position
        if from_end % self.thinning:
            return False
        return self.samples_per_cycle is None or from_end // self.thinning < self.samples_per_cycle

    def collected_steps(self, total_steps: int) -> list[int]:
        """All kept steps among ``0 .. total_steps - 1``, in order."""
        return [t for t in range(total_steps) if self.should_collect(t)]

    def to_dict(self) -> dict:
        """Plain JSON-able fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "SamplingSchedule":
        return cls(**fields)
