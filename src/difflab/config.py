"""Typed training configuration: nested dataclasses, JSON/TOML files, dotted overrides and
validation that names the bad field and value in one line.

``TrainConfig`` defaults are the MNIST recipe of the main job on a CPU with AMX (tuned for
quality per CPU-minute, see BENCHMARKS.md); the other data sets' recipes and those for fp32
machines are in ``difflab.recipes``. Override any field with ``--set section.field=value`` (e.g.
``--set optim.lr=1e-3 --set net.channel_mult=[1,2,2]``) or a TOML/JSON file (``--config``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from difflab.device import PRECISIONS, check_device_name
from difflab.nets import net_config
from difflab.nets.configs import DiTConfig, UNetConfig

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
    hflip: bool = False              # mirror each training image with probability 1/2


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
    """How the run computes; fixed for its lifetime (a resume refuses to change these)."""
    seed: int = 0
    device: str = "cpu"              # cpu | cuda | cuda:N | mps
    precision: str = "auto"          # auto (bf16 only where it is faster: AMX, CUDA) | bf16 | fp32


@dataclass
class LoopConfig:
    """Stopping rule, logging and checkpoints; a resume may change these."""
    out: str = "runs/mnist"
    steps: int | None = None         # stop after this many steps ...
    minutes: float | None = 8.5      # ... or this much training wall time, whichever comes first
    threads: int | None = None       # torch.set_num_threads; None keeps torch's default
    log_every: int = 25
    sample_every: int = 500
    checkpoint_every: int = 250
    eval_every: int = 0
    eval_n: int = 1000


@dataclass
class SampleConfig:
    """The run's sampling recipe: grids during training, the final samples, and the defaults of
    ``difflab sample`` and ``difflab.load(...).sample``; a resume may change these."""
    # defaults chosen in BENCHMARKS.md, "Few-step sampling", on two feature spaces
    sampler: str = "dpmpp-2m"
    steps: int = 10                  # x2 network evaluations per step with guidance
    guidance: float = 1.5            # classifier-free guidance scale (class-conditional models)
    grid: str | None = "auto"        # sigma grid: auto (the run's optimized grid for this sampler
    #                                  and steps, else generation.model_sigmas' rule), optimized,
    #                                  a GRIDS name, or None (the model's: Karras or the DDPM grid)
    final_samples: int = 1000


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    net: UNetConfig | DiTConfig = field(default_factory=UNetConfig)  # net.kind picks
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# Sections a resume may change: they do not alter the training trajectory; nor do the fields
# that say where the data files are (the same data may move, or be found through $DIFFLAB_DATA).
RESUMABLE_SECTIONS = ("loop", "sample")
LOCATION_FIELDS = {"data": ("data_dir", "folder")}
# Upper bounds of the numeric fields (the lower ones are in ``validate``): far above any real
# run, low enough that nothing overflows (sample positions step * batch in int64, sigma^2 in
# float32) or asks for absurd time and memory before the memory checks can say so.
MAX_TRAIN_STEPS = 10**9
MAX_BATCH = 1_000_000
MAX_MINUTES = 5_256_000
MAX_THREADS = 1024
MAX_TIMESTEPS = 100_000
MAX_SIGMA = 1e4


def trajectory(config: dict) -> dict:
    """The parts of a config dict that fix the training trajectory: all sections but
    RESUMABLE_SECTIONS, without the LOCATION_FIELDS."""
    config = json.loads(json.dumps(config))  # tuples -> lists, as saved
    return {k: {f: v for f, v in fields_.items() if f not in LOCATION_FIELDS.get(k, ())}
            if isinstance(fields_, dict) else fields_
            for k, fields_ in config.items() if k not in RESUMABLE_SECTIONS}


def _parse(where: str, value, base: str):
    """A string from the command line as JSON (numbers, lists, true/false), else an error."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise ConfigError(f"{where}: cannot parse {value!r} as {base}") from None


def _coerce(where: str, annotation: str, value):
    """``value`` converted to the field's declared type (``annotation``, e.g. ``int | None``,
    ``tuple[int, ...]``), or ConfigError naming the field and the value."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if optional and (value is None or (isinstance(value, str)
                                       and value.strip().lower() in ("none", "null", ""))):
        return None
    if base == "bool":
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value if isinstance(value, bool) else text in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if base in ("int", "float"):
        if isinstance(value, str):
            value = _parse(where, value, base)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected {'an integer' if base == 'int' else 'a number'}, "
                              f"got {value!r}")
        if base == "float":
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if base.startswith("tuple["):
        items = [t.strip() for t in base[len("tuple["):-1].split(",")]
        if isinstance(value, str):
            value = _parse(where, value, "a list")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if items[-1] != "..." and len(value) != len(items):
            raise ConfigError(f"{where}: expected a list of {len(items)} values, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", items[0], v) for i, v in enumerate(value))
    raise ConfigError(f"{where}: unsupported field type {annotation}")  # pragma: no cover


def update(config: TrainConfig, values: dict, where: str = "config") -> TrainConfig:
    """Set fields from a nested dict ``{section: {field: value}}``; unknown names are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of config sections, got "
                          f"{type(values).__name__}")
    for section, fields_ in values.items():
        if not hasattr(config, section) or not dataclasses.is_dataclass(getattr(config, section)):
            raise ConfigError(f"unknown config section {section!r} (choose from "
                              f"{', '.join(f.name for f in dataclasses.fields(config))})")
        if not isinstance(fields_, dict):
            raise ConfigError(f"config section {section!r} must be a table of fields")
        if section == "net" and "kind" in fields_:  # a new kind starts from its own defaults
            try:
                config.net = net_config(str(fields_["kind"]))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        target = getattr(config, section)
        types = {f.name: str(f.type) for f in dataclasses.fields(target)}  # annotations as text
        for name, value in fields_.items():
            if section == "net" and name == "kind":
                continue
            if name not in types:
                raise ConfigError(f"unknown config field {section}.{name} "
                                  f"(valid: {', '.join(sorted(types))})")
            setattr(target, name, _coerce(f"{section}.{name}", types[name], value))
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
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({getattr(e, 'strerror', None) or e})") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ConfigError(f"{path}: expected a table of config sections, each a table of fields")
    return values


def from_dict(values: dict) -> TrainConfig:
    return validate(update(TrainConfig(), values))


def validate(config: TrainConfig) -> TrainConfig:
    """Check ranges and names; raise ConfigError naming the field and value."""
    from difflab.data import DATASETS, MAX_IMAGE_SIZE
    from difflab.options import (GRIDS, MAX_STEPS, PARAMETERIZATIONS, SAMPLERS, SCHEDULES,
                                 TRAINING_DENSITIES)

    def check(ok: bool, where: str, value, expected: str):
        if not ok:
            raise ConfigError(f"{where}={value!r}: {expected}")

    d, o, r, f = config.diffusion, config.optim, config.run, config.data
    loop, smp = config.loop, config.sample
    for section in dataclasses.fields(config):
        for fld in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), fld.name)
            check(not isinstance(value, float) or math.isfinite(value),
                  f"{section.name}.{fld.name}", value, "must be a finite number")
    check(f.dataset in DATASETS, "data.dataset", f.dataset, f"choose from {', '.join(DATASETS)}")
    check(f.image_size is None or 4 <= f.image_size <= MAX_IMAGE_SIZE, "data.image_size",
          f.image_size, f"must be in [4, {MAX_IMAGE_SIZE}] (or none: the data set's size)")
    check(f.channels in (None, 1, 3), "data.channels", f.channels, "must be 1 or 3 (or none)")
    check(d.parameterization in PARAMETERIZATIONS, "diffusion.parameterization",
          d.parameterization, f"choose from {', '.join(PARAMETERIZATIONS)}")
    check(d.density in TRAINING_DENSITIES, "diffusion.density", d.density,
          f"choose from {', '.join(TRAINING_DENSITIES)}")
    check(d.schedule in SCHEDULES, "diffusion.schedule", d.schedule,
          f"choose from {', '.join(SCHEDULES)}")
    check(d.weighting in ("uniform", "min-snr"), "diffusion.weighting", d.weighting,
          "choose from uniform, min-snr")
    check(d.timesteps >= 2, "diffusion.timesteps", d.timesteps, "must be at least 2")
    check(d.timesteps <= MAX_TIMESTEPS, "diffusion.timesteps", d.timesteps,
          f"must be at most {MAX_TIMESTEPS:,}")
    check(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", d.sigma_min,
          "must be positive and below diffusion.sigma_max")
    check(d.sigma_max <= MAX_SIGMA, "diffusion.sigma_max", d.sigma_max,
          f"must be at most {MAX_SIGMA:g} (its square must fit float32)")
    check(0 < d.sigma_data <= MAX_SIGMA, "diffusion.sigma_data", d.sigma_data,
          f"must be positive and at most {MAX_SIGMA:g}")
    # ln sigma ~ N(p_mean, p_std^2): within these a draw 5 std out still fits float32 squared
    check(-10 <= d.p_mean <= 10, "diffusion.p_mean", d.p_mean, "must be in [-10, 10]")
    check(0 < d.p_std <= 4, "diffusion.p_std", d.p_std, "must be in (0, 4]")
    check(d.min_snr_gamma > 0, "diffusion.min_snr_gamma", d.min_snr_gamma, "must be positive")
    check(0 <= d.label_dropout < 1, "diffusion.label_dropout", d.label_dropout, "must be in [0, 1)")
    check(0 < o.lr <= 1, "optim.lr", o.lr, "must be positive" if o.lr <= 0 else "must be <= 1")
    check(all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "must be two numbers in [0, 1)")
    check(0 <= o.weight_decay and o.lr * o.weight_decay <= 1, "optim.weight_decay",
          o.weight_decay, "must be >= 0, with optim.lr * optim.weight_decay <= 1")
    check(o.batch_size >= 1, "optim.batch_size", o.batch_size, "must be at least 1")
    check(o.batch_size <= MAX_BATCH, "optim.batch_size", o.batch_size,
          f"must be at most {MAX_BATCH:,}")
    check(0 <= o.warmup_steps <= MAX_TRAIN_STEPS, "optim.warmup_steps", o.warmup_steps,
          f"must be in [0, {MAX_TRAIN_STEPS:,}]")
    check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables)")
    check(o.ema_half_life_images > 0, "optim.ema_half_life_images", o.ema_half_life_images,
          "must be positive")
    check(o.ema_rampup_ratio >= 0, "optim.ema_rampup_ratio", o.ema_rampup_ratio, "must be >= 0")
    try:
        check_device_name(r.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check(0 <= r.seed < 2**63, "run.seed", r.seed, "must be in [0, 2^63)")
    check(r.precision in PRECISIONS, "run.precision", r.precision,
          f"choose from {', '.join(PRECISIONS)}")
    check(loop.steps is None or loop.steps >= 1, "loop.steps", loop.steps, "must be at least 1")
    check(loop.steps is None or loop.steps <= MAX_TRAIN_STEPS, "loop.steps", loop.steps,
          f"must be at most {MAX_TRAIN_STEPS:,}")
    check(loop.minutes is None or loop.minutes > 0, "loop.minutes", loop.minutes, "must be positive")
    check(loop.minutes is None or loop.minutes <= MAX_MINUTES, "loop.minutes", loop.minutes,
          f"must be at most {MAX_MINUTES:,} (ten years)")
    check(loop.steps is not None or loop.minutes is not None, "loop.steps", loop.steps,
          "give loop.steps or loop.minutes")
    check(loop.threads is None or 1 <= loop.threads <= MAX_THREADS, "loop.threads", loop.threads,
          "must be at least 1" if loop.threads is None or loop.threads < 1
          else f"must be at most {MAX_THREADS}")
    for name in ("log_every", "sample_every", "checkpoint_every", "eval_n"):
        check(getattr(loop, name) >= 1, f"loop.{name}", getattr(loop, name), "must be at least 1")
    check(loop.eval_every >= 0, "loop.eval_every", loop.eval_every, "must be >= 0 (0 disables)")
    check(1 <= smp.steps <= MAX_STEPS, "sample.steps", smp.steps, f"must be in [1, {MAX_STEPS}]")
    check(smp.final_samples >= 0, "sample.final_samples", smp.final_samples, "must be >= 0")
    check(smp.guidance >= 0, "sample.guidance", smp.guidance, "must be >= 0")
    check(smp.sampler in SAMPLERS, "sample.sampler", smp.sampler,
          f"choose from {', '.join(SAMPLERS)}")
    check(smp.grid is None or smp.grid in (*GRIDS, "optimized", "auto"), "sample.grid", smp.grid,
          f"choose from auto, optimized, {', '.join(GRIDS)} (or none: the model's grid)")
    try:
        config.net.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return config


# Config sections written before the net/run/loop/sample split (checkpoint format version 1).
LEGACY_RUN_FIELDS = {"seed": ("run", "seed"), "out": ("loop", "out"), "steps": ("loop", "steps"),
                     "minutes": ("loop", "minutes"), "threads": ("loop", "threads"),
                     "log_every": ("loop", "log_every"), "sample_every": ("loop", "sample_every"),
                     "checkpoint_every": ("loop", "checkpoint_every"),
                     "eval_every": ("loop", "eval_every"), "eval_n": ("loop", "eval_n"),
                     "sample_steps": ("sample", "steps"), "sample_sampler": ("sample", "sampler"),
                     "sample_guidance": ("sample", "guidance"),
                     "final_samples": ("sample", "final_samples")}


def upgrade_legacy(config: dict, where: str) -> tuple[dict, dict | None]:
    """(config dict in today's sections, data shape dict or None) from a config dict that may
    predate the net/run/loop/sample split: ``unet`` becomes ``net`` (kind unet) and gives up its
    data shape, ``run.bf16`` becomes ``run.precision``, the run fields move to their sections."""
    if "unet" not in config:
        return config, None
    config = json.loads(json.dumps(config))
    unet, run = dict(config.pop("unet")), dict(config.pop("run", {}))
    try:
        shape = {"channels": unet.pop("in_channels"), "size": [unet.pop("image_size")] * 2,
                 "num_classes": unet.pop("num_classes", 0)}
    except KeyError as e:
        raise ConfigError(f"{where}: old-format config has no unet.{e.args[0]}; retrain, or "
                          "add the field to the unet section of its config") from None
    unet.pop("extra", None)
    config["net"] = {"kind": "unet", **unet}
    if "bf16" in run:
        config.setdefault("run", {})["precision"] = "bf16" if run.pop("bf16") else "fp32"
    for name, value in run.items():
        section, field_name = LEGACY_RUN_FIELDS.get(name, ("run", name))
        config.setdefault(section, {})[field_name] = value
    return config, shape
