"""Typed training configuration: nested dataclasses, JSON/TOML files, dotted overrides and
validation that names the bad field and value in one line.

``TrainConfig`` defaults are the MNIST recipe of the main job (tuned for quality per CPU-minute,
see BENCHMARKS.md). Override any field with ``--set section.field=value`` (e.g.
``--set optim.lr=1e-3 --set unet.channel_mult=[1,2,2]``) or a TOML/JSON file (``--config``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from difflab.nets.unet import UNetConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration field has a bad name or value; one line naming the field and the value."""


@dataclass
class DataConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    folder: str | None = None        # for dataset = "folder"
    image_size: int | None = None    # resize; None keeps the data set's size
    channels: int | None = None      # for dataset = "folder"
    class_conditional: bool = True   # learn p(x | label) too; sample with guidance


@dataclass
class DiffusionConfig:
    parameterization: str = "edm"    # eps | x0 | v | edm (difflab.diffusion.denoiser)
    density: str = "lognormal"       # training sigma density (difflab.diffusion.schedules)
    schedule: str = "cosine"         # alpha_bar schedule for density = "ddpm" and DDPM grids
    timesteps: int = 1000
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    weighting: str = "uniform"       # uniform (the parameterization's own target) | min-snr
    min_snr_gamma: float = 5.0
    label_dropout: float = 0.1       # classifier-free guidance training (class-conditional only)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    batch_size: int = 64
    ema_half_life_images: float = 25_000.0
    ema_rampup_ratio: float = 0.1


@dataclass
class RunConfig:
    out: str = "runs/mnist"
    steps: int | None = None         # stop after this many steps ...
    minutes: float | None = 8.5      # ... or this much training wall time, whichever comes first
    seed: int = 0
    bf16: bool = True                # bf16 autocast on CPU (fast on CPUs with AMX/AVX-512 BF16)
    threads: int | None = None       # torch.set_num_threads; None keeps torch's default
    log_every: int = 25
    sample_every: int = 500
    checkpoint_every: int = 250
    sample_steps: int = 20           # x2 network evaluations per step with guidance
    sample_sampler: str = "dpmpp-2m"
    sample_guidance: float = 2.0     # classifier-free guidance scale (class-conditional models)
    final_samples: int = 1000
    eval_every: int = 0
    eval_n: int = 1000


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(section: str, name: str, current, value, optional: bool = False):
    """Convert ``value`` to the type of the field's current value, or raise ConfigError."""
    where = f"{section}.{name}"
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if isinstance(current, bool) or (current is None and isinstance(value, bool)):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if isinstance(value, str) and (isinstance(current, (int, float, tuple, list, dict))
                                   or current is None):
        if current is None and value.lower() in ("none", "null", ""):
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if current is None:
                return value
            raise ConfigError(f"{where}: cannot parse {value!r} as {type(current).__name__}") from None
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}")
    return value


def update(config: TrainConfig, values: dict) -> TrainConfig:
    """Set fields from a nested dict ``{section: {field: value}}``; unknown names are errors."""
    for section, fields_ in values.items():
        if not hasattr(config, section) or not dataclasses.is_dataclass(getattr(config, section)):
            raise ConfigError(f"unknown config section {section!r} (choose from "
                              f"{', '.join(f.name for f in dataclasses.fields(config))})")
        if not isinstance(fields_, dict):
            raise ConfigError(f"config section {section!r} must be a table of fields")
        target = getattr(config, section)
        types = {f.name: str(f.type) for f in dataclasses.fields(target)}
        for name, value in fields_.items():
            if name not in types:
                raise ConfigError(f"unknown config field {section}.{name} "
                                  f"(valid: {', '.join(sorted(types))})")
            setattr(target, name, _coerce(section, name, getattr(target, name), value,
                                          optional="None" in types[name]))
    return config


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=1e-3", ...]`` -> ``{"optim": {"lr": "1e-3"}}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        out.setdefault(section, {})[name] = value.strip()
    return out


def load_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: invalid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None


def from_dict(values: dict) -> TrainConfig:
    return validate(update(TrainConfig(), values))


def validate(config: TrainConfig) -> TrainConfig:
    """Check ranges and names; raise ConfigError naming the field and value."""
    from difflab.data import DATASETS
    from difflab.diffusion.denoiser import PARAMETERIZATIONS
    from difflab.diffusion.schedules import SCHEDULES, TRAINING_DENSITIES

    def check(ok: bool, where: str, value, expected: str):
        if not ok:
            raise ConfigError(f"{where}={value!r}: {expected}")

    d, o, r, f = config.diffusion, config.optim, config.run, config.data
    check(f.dataset in DATASETS, "data.dataset", f.dataset, f"choose from {', '.join(DATASETS)}")
    check(d.parameterization in PARAMETERIZATIONS, "diffusion.parameterization",
          d.parameterization, f"choose from {', '.join(PARAMETERIZATIONS)}")
    check(d.density in TRAINING_DENSITIES, "diffusion.density", d.density,
          f"choose from {', '.join(TRAINING_DENSITIES)}")
    check(d.schedule in SCHEDULES, "diffusion.schedule", d.schedule,
          f"choose from {', '.join(SCHEDULES)}")
    check(d.weighting in ("uniform", "min-snr"), "diffusion.weighting", d.weighting,
          "choose from uniform, min-snr")
    check(d.timesteps >= 2, "diffusion.timesteps", d.timesteps, "must be at least 2")
    check(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", d.sigma_min,
          "must be positive and below diffusion.sigma_max")
    check(d.sigma_data > 0, "diffusion.sigma_data", d.sigma_data, "must be positive")
    check(0 <= d.label_dropout < 1, "diffusion.label_dropout", d.label_dropout, "must be in [0, 1)")
    check(o.lr > 0, "optim.lr", o.lr, "must be positive")
    check(o.batch_size >= 1, "optim.batch_size", o.batch_size, "must be at least 1")
    check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables)")
    check(o.ema_half_life_images > 0, "optim.ema_half_life_images", o.ema_half_life_images,
          "must be positive")
    check(r.steps is None or r.steps >= 1, "run.steps", r.steps, "must be at least 1")
    check(r.minutes is None or r.minutes > 0, "run.minutes", r.minutes, "must be positive")
    check(r.steps is not None or r.minutes is not None, "run.steps", r.steps,
          "give run.steps or run.minutes")
    for name in ("log_every", "sample_every", "checkpoint_every", "sample_steps", "eval_n"):
        check(getattr(r, name) >= 1, f"run.{name}", getattr(r, name), "must be at least 1")
    check(r.eval_every >= 0, "run.eval_every", r.eval_every, "must be >= 0 (0 disables)")
    check(r.final_samples >= 0, "run.final_samples", r.final_samples, "must be >= 0")
    check(r.sample_guidance >= 0, "run.sample_guidance", r.sample_guidance, "must be >= 0")
    from difflab.diffusion.samplers import SAMPLERS

    check(r.sample_sampler in SAMPLERS, "run.sample_sampler", r.sample_sampler,
          f"choose from {', '.join(SAMPLERS)}")
    try:
        config.unet.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return config
