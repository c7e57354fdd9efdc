"""Checkpoints: safetensors weights plus a JSON description, written atomically, loaded safely.

A run directory holds ``checkpoint.json`` (config, step, metadata, and the name of its weights
file) and ``checkpoint-<step>.safetensors`` (tensors: ``model.*``, ``ema.*``, ``optim.*``;
checkpoints before format version 3 also hold ``rng.*`` generator states, which are no longer
needed: training randomness is a function of (seed, step, sample index)). Each file is written to a temporary name and renamed into place, weights first, so a
run killed at any moment leaves ``checkpoint.json`` pointing at a complete weights file. Nothing is
ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from difflab.config import MAX_TRAIN_STEPS
from difflab.files import inside, write_atomic
from difflab.training.run_dir import INDEX, WEIGHTS_NAME

FORMAT = "difflab-checkpoint"
# 2: config sections net/run/loop/sample and the data shape beside the config; 3: training
# randomness keyed by (seed, step, sample index), no rng.* tensors (a version 2 run resumes with
# the new draws, so its continuation differs from what the old code would have drawn), and the
# weights file's SHA-256 in weights_sha256 (required from version 3 on, checked on load)
VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; one line naming the file."""


def save_checkpoint(run_dir: str | Path, step: int, config: dict, tensors: dict[str, torch.Tensor],
                    meta: dict | None = None) -> Path:
    """Write the weights, then point ``checkpoint.json`` at them; remove superseded weights
    (files named exactly ``checkpoint-<digits>.safetensors``, nothing else). A full disk is one
    OSError naming the file, and the previous checkpoint stays whole and current."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights_name = f"checkpoint-{step:08d}.safetensors"
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    raw = save(tensors, metadata={"format": FORMAT, "step": str(step)})
    write_atomic(inside(run_dir, weights_name), raw)
    info = {"format": FORMAT, "version": VERSION, "step": step, "weights": weights_name,
            "weights_sha256": hashlib.sha256(raw).hexdigest(), "config": config, **(meta or {})}
    write_atomic(inside(run_dir, INDEX), json.dumps(info, indent=2))
    for old in run_dir.iterdir():
        if WEIGHTS_NAME.fullmatch(old.name) and old.name != weights_name:
            inside(run_dir, old.name).unlink(missing_ok=True)
    return run_dir / INDEX


def _index_path(path: str | Path) -> Path:
    """The checkpoint.json of a run directory, its weights file or itself, refused if it is a
    link out of the run directory."""
    path = Path(path)
    if path.is_dir():
        path = inside(path, INDEX)
    else:
        path = inside(path.parent, INDEX if path.suffix == ".safetensors" else path.name)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint found (expected a run directory or {INDEX})")
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(info from checkpoint.json, tensors) of a run directory or checkpoint.json path."""
    index = _index_path(path)
    try:
        info = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{index}: not a difflab checkpoint (format field is "
                              f"{info.get('format') if isinstance(info, dict) else None!r})")
    for key, kind in (("step", int), ("weights", str), ("config", dict)):
        if key not in info:
            raise CheckpointError(f"{index}: missing field {key!r}")
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise CheckpointError(f"{index}: field {key!r} should be {kind.__name__}, got "
                                  f"{info[key]!r:.60}")
    version = info.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{index}: field 'version' should be int, got {version!r:.60}")
    if version > VERSION:
        raise CheckpointError(f"{index}: format version {version} is newer than this difflab "
                              f"reads (up to {VERSION}); upgrade difflab")
    if not 0 <= info["step"] <= MAX_TRAIN_STEPS or not WEIGHTS_NAME.fullmatch(info["weights"]):
        raise CheckpointError(f"{index}: bad step {info['step']!r:.40} (must be in [0, "
                              f"{MAX_TRAIN_STEPS:,}]) or weights name {info['weights']!r:.60} "
                              "(expected checkpoint-<step>.safetensors)")
    try:
        weights = inside(index.parent, info["weights"])
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file named in {index.name} is missing")
    digest = info.get("weights_sha256")  # written since format version 3
    if digest is None and version >= 3:
        raise CheckpointError(f"{index}: format version {version} records the weights' SHA-256 "
                              "but field 'weights_sha256' is missing (tampered with?)")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise CheckpointError(f"{index}: field 'weights_sha256' should be 64 hex digits, got "
                              f"{digest!r:.80}")
    try:
        raw = weights.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{weights}: cannot read ({e.strerror or e})") from None
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({e})") from None
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(f"{weights}: contents do not match the SHA-256 recorded in "
                              f"{index.name} (corrupt or replaced)")
    # an older version number must match the older layout: a newer checkpoint with its version
    # lowered (to skip the checksum) is refused, not loaded unchecked
    if version == 1 and "unet" not in info["config"] or \
            version == 2 and not any(k.startswith("rng.") for k in tensors):
        raise CheckpointError(f"{index}: says format version {version}, but its "
                              f"{'config' if version == 1 else 'weights'} have a newer layout "
                              "(tampered with?)")
    return info, tensors


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimizer's state_dict into named tensors plus its JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   param_groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in sub_state(tensors, "optim").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    # load_state_dict hands back the saved (contiguous) layout; torch's fused CPU AdamW walks the
    # raw memory of a parameter and its moments alike, so a channels-last parameter
    # (device.fast_layout) with contiguous moments would be updated wrongly without an error.
    for group in optimizer.param_groups:
        for p in group["params"]:
            per_param = optimizer.state.get(p, {})
            for key, value in per_param.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    per_param[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def checkpoint_config(info: dict, where) -> tuple:
    """(TrainConfig, DataShape) of a checkpoint's info; version-1 configs are upgraded."""
    from difflab.config import from_dict, upgrade_legacy
    from difflab.data.shape import DataShape

    config, legacy_shape = upgrade_legacy(info["config"], str(where))
    shape = info.get("shape", legacy_shape)
    if shape is None:
        raise CheckpointError(f"{where}: missing field 'shape' (the data shape)")
    return from_dict(config), DataShape.from_dict(shape, str(where))


def check_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where) -> None:
    """CheckpointError naming ``where`` unless ``weights`` has exactly ``module``'s tensors, of
    its shapes and dtypes (an integer tensor is never cast into a float weight). ``module`` may
    live on the meta device: a config or shape that was tampered with is caught before the
    network is built for real (which could ask for any amount of memory)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config ("
                              + (f"missing {missing[0]}" if missing else
                                 f"unexpected {unexpected[0]}") + ")")
    for name, value in weights.items():
        if value.shape != own[name].shape or value.dtype != own[name].dtype:
            raise CheckpointError(f"{where}: weight {name} is {str(value.dtype)[6:]} "
                                  f"{tuple(value.shape)}, the network's "
                                  f"{str(own[name].dtype)[6:]} {tuple(own[name].shape)} "
                                  "(weights and config do not match: corrupt or tampered with)")


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where) -> None:
    """``module.load_state_dict(weights)`` after ``check_weights``; CheckpointError naming
    ``where`` if they do not match or are not finite."""
    check_weights(module, weights, where)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{where}: weights contain NaN or inf ({bad[0]}"
                              f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})")
    module.load_state_dict(weights)


def load_denoiser(path: str | Path, ema: bool = True):
    """(Denoiser in eval mode, TrainConfig, DataShape) from a checkpoint; EMA weights unless
    ``ema=False``."""
    from difflab.diffusion.denoiser import build_denoiser

    info, tensors = read_checkpoint(path)
    config, shape = checkpoint_config(info, _index_path(path))
    weights = sub_state(tensors, "ema" if ema and any(k.startswith("ema.") for k in tensors) else "model")
    with torch.device("meta"):  # no memory: the recorded config and shape must fit the weights
        check_weights(build_denoiser(config, shape).net, weights, _index_path(path))
    denoiser = build_denoiser(config, shape)
    load_weights(denoiser.net, weights, _index_path(path))
    return denoiser.eval().requires_grad_(False), config, shape
