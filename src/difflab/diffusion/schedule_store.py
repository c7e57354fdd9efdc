"""Optimized sigma grids of a run, kept in ``RUN/schedules.json`` keyed ``"<sampler>/<steps>"``:
written atomically (temporary file + ``os.replace``), validated on read with one-line
ValueErrors naming the file and the field; the file never resolves outside the run directory."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from difflab.files import inside, write_atomic

SCHEDULES_FILE = "schedules.json"
FORMAT = "difflab-schedules"
VERSION = 1
_KEY = re.compile(r"^([a-z0-9][a-z0-9-]*)/([1-9][0-9]*)$")


def schedule_key(sampler: str, steps: int) -> str:
    """The key of a grid in ``schedules.json``: ``"<sampler>/<steps>"``."""
    return f"{sampler}/{int(steps)}"


def _check_entry(where: str, key, entry) -> tuple[list[float], dict]:
    """(sigmas, meta) of one schedules.json entry; else a one-line ValueError naming ``where``."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"{where}: key {key!r} is not of the form '<sampler>/<steps>'")
    field_ = f"schedules[{key!r}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {field_} must be an object with 'sigmas' and 'meta'")
    sigmas, meta = entry.get("sigmas"), entry.get("meta", {})
    if not isinstance(sigmas, list) or len(sigmas) < 2:
        raise ValueError(f"{where}: {field_}.sigmas must be a list of at least 2 numbers")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
               for s in sigmas):
        raise ValueError(f"{where}: {field_}.sigmas must hold finite numbers only")
    if not all(a > b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"{where}: {field_}.sigmas must be strictly decreasing")
    if sigmas[-1] != 0:
        raise ValueError(f"{where}: {field_}.sigmas must end in 0, ends in {sigmas[-1]!r}")
    steps = int(_KEY.match(key).group(2))
    if len(sigmas) != steps + 1:
        raise ValueError(f"{where}: {field_}.sigmas has {len(sigmas)} levels, the key says "
                         f"{steps} steps ({steps + 1} levels)")
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: {field_}.meta must be an object")
    return [float(s) for s in sigmas], meta


def load_schedules(run_dir) -> dict[str, dict]:
    """The grids saved in ``run_dir/schedules.json`` as {key: {"sigmas": float64 tensor, "meta":
    dict}}; {} if the file does not exist; ValueError (one line: file and field) if malformed."""
    path = inside(run_dir, SCHEDULES_FILE)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: format field is {found!r}, expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: version field is {data.get('version')!r}, expected {VERSION}")
    entries = data.get("schedules")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: schedules field must be an object keyed '<sampler>/<steps>'")
    out = {}
    for key, entry in entries.items():
        sigmas, meta = _check_entry(str(path), key, entry)
        out[key] = {"sigmas": torch.tensor(sigmas, dtype=torch.float64), "meta": meta}
    return out


def save_schedule(run_dir, key: str, sigmas, meta: dict | None = None) -> Path:
    """Add (or replace) the grid ``key`` (``schedule_key(sampler, steps)``) in
    ``run_dir/schedules.json``, keeping the others; atomic (temporary file, then os.replace).
    The grid and the existing file are validated first (ValueError, nothing written)."""
    run_dir = Path(run_dir)
    path = inside(run_dir, SCHEDULES_FILE)
    values = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    meta = dict(meta or {})
    _check_entry(str(path), key, {"sigmas": values, "meta": meta})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: schedules[{key!r}].meta is not JSON-serializable "
                         f"({e})") from None
    entries = {k: {"sigmas": v["sigmas"].tolist(), "meta": v["meta"]}
               for k, v in load_schedules(run_dir).items()}
    entries[key] = {"sigmas": values, "meta": meta}
    text = json.dumps({"format": FORMAT, "version": VERSION, "schedules": entries}, indent=1,
                      allow_nan=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text)
