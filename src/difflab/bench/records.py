"""The JSONL results file of ``difflab bench optimizers``: one record per finished run,
validated on the way in and out.

Reading is defensive (``read_records``): a line that is not a complete, well-formed record (a
torn write, byte garbage, JSON of the wrong shape, fields missing or of the wrong type, NaN/inf
where a number is required) is skipped with a ``RecordWarning`` naming the file and line, so
its run is simply redone; of several records with the same key the last well-formed one wins,
with a warning naming the key and the lines. Writing (``append_record``) validates with the
same rules, so the harness never writes a record it would refuse to read.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable

from difflab.bench.runner import (ARM_KNOBS, ARMS, CALIBRATION_BINS, ENSEMBLES, FINAL_ONLY_ARMS,
                                  RUN_ARMS)
from difflab.bench.shifts import SHIFT_METRICS, parse_condition

PHASES = ("tune", "grid", "final")


class RecordWarning(UserWarning):
    """A results-file line was skipped or a duplicate key resolved."""


# -- record schema -------------------------------------------------------------------------------
class _Bad(Exception):
    """A record does not have the shape of its kind (message: which field and why)."""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(d: dict, name: str, ok: Callable[[object], bool], what: str, prefix: str = ""):
    if name not in d:
        raise _Bad(f"missing field {prefix}{name!r}")
    v = d[name]
    if not ok(v):
        raise _Bad(f"field {prefix}{name!r} must be {what}, got {_short(v)}")
    return v


def _short(v) -> str:
    text = json.dumps(v) if _jsonable(v) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _dict(v) -> bool:
    return isinstance(v, dict)


def _list_of(ok: Callable[[object], bool], nonempty: bool = True):
    return lambda v: isinstance(v, list) and (len(v) > 0 or not nonempty) and all(ok(x) for x in v)


def _at_least(lo):
    return lambda v: _number(v) and v >= lo


def _int_at_least(lo):
    return lambda v: _integer(v) and v >= lo


_STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_EPOCHS = (_list_of(_at_least(0.0)), "a non-empty list of finite numbers >= 0")
_LOSSES = (_list_of(lambda v: v is None or _number(v)),
           "a non-empty list of finite numbers or nulls")
_ACCURACIES = (_list_of(lambda v: _number(v) and 0.0 <= v <= 1.0),
               "a non-empty list of numbers in [0, 1]")
_ENV_FIELDS = {"torch": _STR, "python": _STR, "cpu": (lambda v: isinstance(v, str), "a string"),
               "threads": (_int_at_least(1), "an integer >= 1"),
               "host_cpus": (lambda v: v is None or _int_at_least(1)(v), "an integer >= 1 or null"),
               "noise_kernel": _STR}


def _check_env(r: dict) -> None:
    env = _field(r, "env", _dict, "an object")
    for name, (ok, what) in _ENV_FIELDS.items():
        _field(env, name, ok, what, "env.")


def _required_hparams(arm: str) -> tuple[str, ...]:
    return ("lr", ARM_KNOBS[arm]) if arm in ARM_KNOBS else ("lr",)


def _check_run(r: dict) -> None:
    key = _field(r, "key", *_STR)
    problem = _field(r, "problem", *_STR)
    arm = _field(r, "arm", lambda v: isinstance(v, str) and v in RUN_ARMS,
                 f"one of {', '.join(RUN_ARMS)}")
    phase = _field(r, "phase", lambda v: isinstance(v, str) and v in PHASES,
                   f"one of {', '.join(PHASES)}")
    if arm in FINAL_ONLY_ARMS and phase != "final":
        raise _Bad(f"arm {arm!r} runs in the final phase only, got phase {phase!r}")
    hparams = _field(r, "hparams", _dict, "an object")
    for name, value in hparams.items():
        if not _number(value):
            raise _Bad(f"field 'hparams.{name}' must be a finite number, got {_short(value)}")
    for name in _required_hparams(arm):
        _field(hparams, name, _at_least(0.0), "a finite number >= 0", "hparams.")
    if not hparams["lr"] > 0:
        raise _Bad(f"field 'hparams.lr' must be > 0, got {_short(hparams['lr'])}")
    seed = _field(r, "seed", _int_at_least(0), "an integer >= 0")
    epochs = _field(r, "epochs", _int_at_least(1), "an integer >= 1")
    for name in ("n_train", "n_val", "n_test", "batch_size", "n_params"):
        _field(r, name, _int_at_least(1), "an integer >= 1")
    _check_env(r)
    _field(r, "initial_loss", _number, "a finite number")
    _field(r, "diverged", lambda v: isinstance(v, bool), "true or false")
    _field(r, "spikes", _int_at_least(0), "an integer >= 0")
    _field(r, "last_epoch_loss_std", lambda v: v is None or _at_least(0.0)(v),
           "a finite number >= 0 or null")
    curve = _field(r, "curve", _dict, "an object")
    series = {"epoch": _EPOCHS, "val_loss": _LOSSES, "val_acc": _ACCURACIES,
              "train_loss": _LOSSES}
    if phase == "final":
        series.update(test_loss=_LOSSES, test_acc=_ACCURACIES, train_eval_loss=_LOSSES,
                      train_eval_acc=_ACCURACIES)
    n = None
    for name, (ok, what) in series.items():
        values = _field(curve, name, ok, what, "curve.")
        if n is not None and len(values) != n:
            raise _Bad(f"field 'curve.{name}' has {len(values)} entries, 'curve.epoch' {n}")
        n = len(values)
    if "calibration" in r:      # optional: results files written before it stay loadable
        if phase != "final":
            raise _Bad("field 'calibration' is only written for final runs")
        _check_calibration(r["calibration"], arm)
    if "shift" in r:            # optional, like calibration
        if phase != "final":
            raise _Bad("field 'shift' is only written for final runs")
        _check_shift(r["shift"])
    timing = _field(r, "timing", _dict, "an object")
    seconds = _field(timing, "train_seconds", _list_of(_at_least(0.0)),
                     "a non-empty list of finite numbers >= 0", "timing.")
    if len(seconds) != n:
        raise _Bad(f"field 'timing.train_seconds' has {len(seconds)} entries, 'curve.epoch' {n}")
    for name in ("wall_seconds", "started", "finished"):
        _field(timing, name, _at_least(0.0), "a finite number >= 0", "timing.")
    try:                        # the key is the spec: it must describe this record
        spec = json.loads(key)
    except ValueError:
        raise _Bad("field 'key' is not a run spec (not JSON)") from None
    if not isinstance(spec, dict):
        raise _Bad("field 'key' is not a run spec (not a JSON object)")
    for name, value in (("problem", problem), ("arm", arm), ("phase", phase), ("seed", seed),
                        ("epochs", epochs), ("batch_size", r["batch_size"]),
                        ("hparams", hparams)):
        if spec.get(name) != value:
            raise _Bad(f"field {name!r} ({_short(value)}) does not match the key's "
                       f"({_short(spec.get(name))})")


_METRICS = {"nll": lambda v: _at_least(0.0)(v), "brier": lambda v: _number(v) and 0 <= v <= 2,
            "ece": lambda v: _number(v) and 0 <= v <= 1}
# written since the ensembles and shifted inputs were added; optional so older files still load
_OPTIONAL_METRICS = {"acc": lambda v: _number(v) and 0 <= v <= 1,
                     "entropy": lambda v: _at_least(0.0)(v)}
_SHIFT_CHECKS = {"acc": _OPTIONAL_METRICS["acc"], "nll": _METRICS["nll"],
                 "entropy": _OPTIONAL_METRICS["entropy"]}
SHIFT_SOURCES = ("final", "average", "ensemble")


def _check_metrics(d, where: str) -> None:
    """null (diverged) or {nll >= 0, brier in [0, 2], ece in [0, 1]; optional acc in [0, 1],
    entropy >= 0}."""
    if d is None:
        return
    if not _dict(d):
        raise _Bad(f"field {where!r} must be an object or null, got {_short(d)}")
    for name, ok in _METRICS.items():
        _field(d, name, ok, "a finite number in its range", where + ".")
    for name, ok in _OPTIONAL_METRICS.items():
        if name in d:
            _field(d, name, ok, "a finite number in its range", where + ".")


def _check_calibration(cal, arm: str) -> None:
    if not _dict(cal):
        raise _Bad(f"field 'calibration' must be an object, got {_short(cal)}")
    _field(cal, "bins", lambda v: v == CALIBRATION_BINS and _integer(v),
           f"the integer {CALIBRATION_BINS}", "calibration.")
    if "final" not in cal:
        raise _Bad("missing field 'calibration.final'")
    _check_metrics(cal["final"], "calibration.final")
    if "average" in cal:
        avg = _field(cal, "average", _dict, "an object", "calibration.")
        for name, lo in (("samples", 0), ("thinning", 1), ("from_step", 0)):
            _field(avg, name, _int_at_least(lo), f"an integer >= {lo}", "calibration.average.")
        if "metrics" not in avg:
            raise _Bad("missing field 'calibration.average.metrics'")
        _check_metrics(avg["metrics"], "calibration.average.metrics")
    if "ensemble" in cal or arm in ENSEMBLES:
        ens = _field(cal, "ensemble", _dict, "an object", "calibration.")
        _field(ens, "kind", lambda v: v == arm and arm in ENSEMBLES,
               f"the record's arm, an ensemble ({', '.join(ENSEMBLES)})", "calibration.ensemble.")
        for name, lo in (("members", 0), ("epochs_per_member", 1)):
            _field(ens, name, _int_at_least(lo), f"an integer >= {lo}", "calibration.ensemble.")
        if "metrics" not in ens:
            raise _Bad("missing field 'calibration.ensemble.metrics'")
        _check_metrics(ens["metrics"], "calibration.ensemble.metrics")


def _check_shift(shift) -> None:
    """{"seed": int >= 0, "n": int >= 1, "final": per-condition metrics or null, optional
    "average"/"ensemble" likewise}; per-condition: {KIND/SEVERITY: {acc, nll, entropy} or null}."""
    if not _dict(shift):
        raise _Bad(f"field 'shift' must be an object, got {_short(shift)}")
    _field(shift, "seed", _int_at_least(0), "an integer >= 0", "shift.")
    _field(shift, "n", _int_at_least(1), "an integer >= 1", "shift.")
    if "final" not in shift:
        raise _Bad("missing field 'shift.final'")
    for source in [k for k in shift if k not in ("seed", "n")]:
        if source not in SHIFT_SOURCES:
            raise _Bad(f"field 'shift' has an unknown source {source!r} (expected "
                       f"{', '.join(SHIFT_SOURCES)})")
        conditions = shift[source]
        if conditions is None:
            continue
        if not _dict(conditions) or not conditions:
            raise _Bad(f"field 'shift.{source}' must be a non-empty object or null, got "
                       f"{_short(conditions)}")
        for name, m in conditions.items():
            try:
                parse_condition(name)
            except ValueError as e:
                raise _Bad(f"field 'shift.{source}': {e}") from None
            if m is None:
                continue
            where = f"shift.{source}.{name}."
            if not _dict(m):
                raise _Bad(f"field {where[:-1]!r} must be an object or null, got {_short(m)}")
            for metric in SHIFT_METRICS:
                _field(m, metric, _SHIFT_CHECKS[metric], "a finite number in its range", where)


def _check_meta(r: dict) -> None:
    for name in ("key", "command", "budget", "problem", "executor"):
        _field(r, name, *_STR)


def _check_overhead(r: dict) -> None:
    _field(r, "key", *_STR)
    _field(r, "problem", *_STR)
    _field(r, "n_params", _int_at_least(1), "an integer >= 1")
    _field(r, "batch_size", _int_at_least(1), "an integer >= 1")
    _check_env(r)
    arms = _field(r, "arms", lambda v: _dict(v) and len(v) > 0, "a non-empty object")
    for arm, a in arms.items():
        where = f"arms.{arm}."
        if arm not in ARMS:
            raise _Bad(f"field 'arms' has an unknown arm {arm!r}")
        if not _dict(a):
            raise _Bad(f"field 'arms.{arm}' must be an object, got {_short(a)}")
        hparams = _field(a, "hparams", _dict, "an object", where)
        for name, value in hparams.items():
            if not _number(value):
                raise _Bad(f"field '{where}hparams.{name}' must be a finite number, got "
                           f"{_short(value)}")
        for name in _required_hparams(arm):
            _field(hparams, name, _number, "a finite number", f"{where}hparams.")
        for name in ("step_seconds", "train_step_seconds", "step_ratio", "train_step_ratio"):
            _field(a, name, _at_least(0.0), "a finite number >= 0", where)
        for name in ("step_ratio_ci", "train_step_ratio_ci"):
            _field(a, name, lambda v: isinstance(v, list) and len(v) == 2
                   and all(_number(x) for x in v), "a list of two finite numbers", where)
        _field(a, "state_bytes", _int_at_least(0), "an integer >= 0", where)


_CHECKS = {"run": _check_run, "meta": _check_meta, "overhead": _check_overhead}


def record_problem(record) -> str | None:
    """Why ``record`` is not a well-formed results record (None if it is one).

    Kinds: ``"run"`` (the default: run records carry no ``kind``), ``"meta"``, ``"overhead"``;
    each has the fields its writer produces, with their types, finite numbers where numbers
    are required, and (runs) curves of equal length and a key that describes the record."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__ if record is not None else 'null'}"
    kind = record.get("kind", "run")
    check = _CHECKS.get(kind) if isinstance(kind, str) else None
    if check is None:
        return f"unknown kind {_short(kind)} (expected one of {', '.join(_CHECKS)})"
    try:
        check(record)
    except _Bad as e:
        return f"{kind} record: {e}"
    return None


# -- the results file ----------------------------------------------------------------------------
def read_records(path: str | os.PathLike, issues: list[str] | None = None) -> list[dict]:
    """All well-formed records of a JSONL results file, one per key, in file order.

    Skipped with a ``RecordWarning`` naming the file and line number (their runs are redone):
    torn or invalid lines (not UTF-8, not JSON) and JSON that is not a well-formed record
    (``record_problem``). Duplicate keys: the last well-formed record wins, with a warning
    naming the key and its lines. The warning texts are also appended to ``issues`` if given.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a results file")
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete_last = data.endswith(b"\n")

    def warn(message: str) -> None:
        if issues is not None:
            issues.append(message)
        # one fixed location: Python's default filter then shows each message once per
        # process, although a sweep reads the file several times
        warnings.warn(message, RecordWarning, stacklevel=2)

    found: list[tuple[int, dict]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = number == len(lines) and not complete_last
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:   # UnicodeDecodeError, JSONDecodeError
            reason = ("incomplete last line (interrupted write)" if torn
                      else "not UTF-8 text" if isinstance(e, UnicodeDecodeError)
                      else "not valid JSON")
            warn(f"{path}:{number}: skipped {reason} (a resumed sweep runs it again)")
            continue
        problem = record_problem(record)
        if problem is not None:
            warn(f"{path}:{number}: skipped malformed record ({problem}; a resumed sweep runs it "
                 "again)")
            continue
        found.append((number, record))
    lines_of: dict[str, list[int]] = {}
    for number, record in found:
        lines_of.setdefault(record["key"], []).append(number)
    out = []
    for number, record in found:
        numbers = lines_of[record["key"]]
        if number != numbers[-1]:
            continue
        if len(numbers) > 1:
            warn(f"{path}: key {record['key']} appears on lines "
                 f"{', '.join(map(str, numbers))}; using line {number} (the last well-formed "
                 "record)")
        out.append(record)
    return out


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (after closing a torn last line, so the new record stays whole).
    A record ``read_records`` would refuse is not written (ValueError)."""
    problem = record_problem(record)
    if problem is not None:
        key = record.get("key") if isinstance(record, dict) else None
        raise ValueError(f"{path}: refusing to write a malformed record {_short(key)}: {problem}")
    path = Path(path)
    line = json.dumps(record, sort_keys=True, allow_nan=False)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + line + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- executors -----------------------------------------------------------------------------------
