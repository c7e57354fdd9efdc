"""Options of the ``Langevin`` optimizer (``langevin.py``): their names, defaults' rules and
one-line validation, and the temperature schedule ``scheduled_temperature``."""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping

NOISE_MODES = ("langevin", "constant", "annealed")
PRECONDITIONERS = (None, "rmsprop")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")
STATE_KEYS = ("momentum_buffer", "square_avg")   # the per-parameter state Langevin keeps


def _show(value) -> str:
    """A short one-line repr of a value for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _is_real(v) -> bool:
    """A real number (int, float, NumPy scalar), not a bool."""
    t = type(v)
    if t is float or t is int:       # fast path: the ABC check costs ~1 us
        return True
    return t is not bool and isinstance(v, numbers.Real)


def _is_int(v) -> bool:
    t = type(v)
    if t is int:
        return True
    return t is not bool and isinstance(v, numbers.Integral)


def _number_in(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """Check: a real number in [lo, hi] (ends open as asked); NaN never passes; hi = inf
    excludes inf."""
    def ok(v) -> bool:
        if not _is_real(v) or v != v:
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open or hi == math.inf
                                                    else v <= hi)
    return ok


def _one_of(choices):
    strings = frozenset(c for c in choices if c is not None)
    allow_none = None in choices

    def ok(v) -> bool:   # no __eq__ of arbitrary objects (tensors, arrays) is ever called
        return (v is None and allow_none) or (type(v) is str and v in strings)
    return ok


def _choices_text(choices) -> str:
    return "choose from " + ", ".join(repr(c) for c in choices)


_FINITE = "must be a finite number >= 0"
# option -> (check, rule shown in the error); the order is the order of the checks
_OPTION_RULES = {
    "lr": (_number_in(0.0), _FINITE),
    "temperature": (_number_in(0.0), _FINITE),
    "noise": (_one_of(NOISE_MODES), _choices_text(NOISE_MODES)),
    "momentum": (_number_in(0.0, 1.0, hi_open=True), "must be a number in [0, 1)"),
    "dampening": (_number_in(0.0, 1.0), "must be a number in [0, 1]"),
    "nesterov": (lambda v: v is True or v is False, "must be True or False"),
    "weight_decay": (_number_in(0.0), _FINITE),
    "preconditioner": (_one_of(PRECONDITIONERS), _choices_text(PRECONDITIONERS)),
    "alpha": (_number_in(0.0, 1.0, hi_open=True), "must be a number in [0, 1)"),
    "eps": (_number_in(0.0, lo_open=True), "must be a finite number > 0"),
    "gamma": (_number_in(0.0), _FINITE),
    "temperature_schedule": (_one_of(TEMPERATURE_SCHEDULES), _choices_text(TEMPERATURE_SCHEDULES)),
    "temperature_end": (_number_in(0.0), _FINITE),
    "schedule_steps": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    "foreach": (lambda v: v is None or v is True or v is False, "must be None, True or False"),
    "step": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
}
OPTIONS = tuple(k for k in _OPTION_RULES if k != "step")
_GET_OPTIONS = operator.itemgetter(*OPTIONS)
_SCHEDULE_OPTIONS = ("temperature", "temperature_schedule", "temperature_end", "schedule_steps")


def _check_options(group: Mapping, names, where: str = "") -> None:
    """One-line ValueError naming the first missing or invalid option among ``names``."""
    for name in names:
        if name not in group:
            missing = [n for n in names if n not in group]
            raise ValueError(f"Langevin: {where}missing option(s) "
                             f"{', '.join(map(repr, missing))}")
        ok, rule = _OPTION_RULES[name]
        value = group[name]
        if not ok(value):
            raise ValueError(f"Langevin: {where}invalid {name} {_show(value)} ({rule})")
    if ("temperature_schedule" in names or "schedule_steps" in names) \
            and group.get("temperature_schedule", "constant") != "constant" \
            and group.get("schedule_steps", 0) <= 0:
        raise ValueError(f"Langevin: {where}temperature_schedule "
                         f"{group['temperature_schedule']!r} needs schedule_steps > 0 "
                         f"(got {group['schedule_steps']!r})")


def _check_group(group: Mapping, where: str = "", with_step: bool = True,
                 names: tuple | None = None) -> None:
    """Validate every option of a param group (or only ``names``) and the relations between
    them."""
    if names is None:
        names = (*OPTIONS, "step") if with_step else OPTIONS
    _check_options(group, names, where)
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(f"Langevin: {where}nesterov requires momentum > 0 and zero dampening "
                         f"(got momentum {group['momentum']!r}, dampening {group['dampening']!r})")
    hot = group["temperature"] > 0 or (group["temperature_schedule"] != "constant"
                                       and group["temperature_end"] > 0)
    if hot and group["noise"] == "langevin" and group["momentum"] != 0 and group["lr"] == 0:
        raise ValueError(f"Langevin: {where}invalid lr {_show(group['lr'])} (momentum noise "
                         f"needs lr > 0 when the temperature is > 0)")


def scheduled_temperature(group: Mapping, step: int) -> float:
    """Temperature D_t of a param group at (0-based) step ``step``.

    ``constant``: D. ``linear``/``cosine``: from D to ``temperature_end`` over ``schedule_steps``
    steps, then ``temperature_end``. Invalid inputs raise a one-line ValueError.
    """
    if not isinstance(group, Mapping):
        raise ValueError(f"scheduled_temperature: group must be a dict of options, got "
                         f"{type(group).__name__}")
    if "temperature_schedule" not in group:            # constant
        names = _SCHEDULE_OPTIONS[:1]
    elif isinstance(group["temperature_schedule"], str) \
            and group["temperature_schedule"] == "constant":
        names = _SCHEDULE_OPTIONS[:2]
    else:                                              # (an invalid name is reported here)
        names = _SCHEDULE_OPTIONS
    _check_options(group, names)
    if not _is_int(step) or step < 0:
        raise ValueError(f"scheduled_temperature: invalid step {_show(step)} "
                         "(must be an integer >= 0)")
    return _scheduled_temperature(group, step)


def _scheduled_temperature(group: Mapping, step: int) -> float:
    d0, kind = group["temperature"], group.get("temperature_schedule", "constant")
    if kind == "constant":
        return d0
    d1, total = group["temperature_end"], group["schedule_steps"]
    u = min(step / total, 1.0)
    if kind == "linear":
        return d1 + (d0 - d1) * (1.0 - u)
    return d1 + (d0 - d1) * 0.5 * (1.0 + math.cos(math.pi * u))
