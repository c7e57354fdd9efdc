"""``difflab train``: flags declared against the config dataclasses, then ``--config`` and
``--set``; trains, finishes the run (``difflab.runs.train_run``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path


# flag -> (config field, help). Type and default come from the config dataclass.
TRAIN_FLAGS = {
    "--data": ("data.dataset", "data set: mnist, cifar10, digits or folder"),
    "--data-dir": ("data.data_dir", "folder with the data files (else $DIFFLAB_DATA, else "
                   "~/.cache/difflab/data)"),
    "--folder": ("data.folder", "image folder for --data folder"),
    "--out": ("loop.out", "run directory"),
    "--steps": ("loop.steps", "stop after this many steps (alone: no time limit)"),
    "--minutes": ("loop.minutes", "stop after this much training time"),
    "--threads": ("loop.threads", "torch CPU threads"),
    "--eval-every": ("loop.eval_every", "log FID/KID (difflab features, test split) every K "
                     "steps (0: off)"),
    "--eval-n": ("loop.eval_n", "samples per evaluation"),
    "--seed": ("run.seed", "seed of initialization, data order and noise"),
    "--device": ("run.device", "cpu, cuda, cuda:N or mps"),
    "--precision": ("run.precision", "auto (bf16 only where it is faster: a CPU with AMX, CUDA), "
                    "bf16 or fp32"),
    "--batch-size": ("optim.batch_size", "images per step"),
    "--final-samples": ("sample.final_samples", "samples saved to samples.npz at the end"),
}


def config_field(dotted: str):
    """(section dataclass, field) of ``section.field`` in TrainConfig; KeyError if it does not exist."""
    from difflab.config import TrainConfig

    section, _, name = dotted.partition(".")
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    target = sections[section].default_factory()
    fields = {f.name: f for f in dataclasses.fields(target)}
    return target, fields[name]


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model (default: the MNIST recipe)",
                       description="Train a denoiser, then sample it and write report.md in the "
                       "run directory.")
    for flag, (dotted, help_text) in TRAIN_FLAGS.items():
        target, fld = config_field(dotted)  # KeyError here if a flag names no config field
        default = getattr(target, fld.name)
        p.add_argument(flag, dest=dotted, metavar=fld.name.upper(),
                       help=f"{help_text} ({dotted}, default {default})")
    p.add_argument("--unconditional", dest="data.class_conditional", action="store_const",
                   const="false", help="ignore labels (default: class-conditional training with "
                   "label dropout, sampled with classifier-free guidance)")
    p.add_argument("--no-bf16", dest="run.precision", action="store_const", const="fp32",
                   help="the same as --precision fp32")
    p.add_argument("--config", help="TOML or JSON file of config sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty "
                   "directory that is not a difflab run (refused otherwise)")
    p.set_defaults(func=cmd_train)


def train_config(args):
    """The TrainConfig of ``difflab train`` arguments: the data set's recipe for the precision
    it will train in (``recipes.recipe``; a resumed run's own saved config instead), then
    --config, then flags, then --set; validated.

    Every value is checked on the plain recipe first, without torch, so that a bad value
    answers at once; only then is the precision resolved (which imports torch) and, where it
    has a recipe of its own, the config assembled again on that recipe. On a resume the data
    directory is where this command finds the data (--data-dir, else $DIFFLAB_DATA, else the
    directory the run was trained with): a location, not part of the run."""
    import os

    from difflab.config import ConfigError, load_file, parse_overrides, update, validate
    from difflab.recipes import recipe
    from difflab.data import ENV_VAR

    from_file = load_file(args.config) if args.config else {}
    overrides = parse_overrides(args.set)

    def given(section: str, name: str):  # --set, then the flag, then the file
        return (overrides.get(section, {}).get(name) or getattr(args, f"{section}.{name}", None)
                or from_file.get(section, {}).get(name))

    def assemble(config):
        try:
            update(config, from_file)
        except ConfigError as e:  # an unknown field or a value of the wrong type: name the file
            raise ConfigError(f"{args.config}: {e}") from None
        flags = {}
        for dotted in [d for d, _ in TRAIN_FLAGS.values()] + ["data.class_conditional",
                                                               "run.precision"]:
            value = getattr(args, dotted, None)
            if value is not None:
                section, _, name = dotted.partition(".")
                flags.setdefault(section, {})[name] = value
        update(config, flags)
        if getattr(args, "loop.steps") is not None and getattr(args, "loop.minutes") is None:
            config.loop.minutes = None  # --steps alone means "exactly this many steps"
        update(config, overrides)
        return validate(config)

    saved = saved_config(Path(given("loop", "out") or recipe().loop.out)) if args.resume else None
    if saved is not None:
        if given("data", "data_dir") is None and os.environ.get(ENV_VAR):
            saved.data.data_dir = None  # $DIFFLAB_DATA says where the data is now
        return assemble(saved)
    # a new run (or one whose config cannot be read: training says why)
    from difflab.device import resolve_device, resolve_precision

    dataset = str(given("data", "dataset") or "mnist")
    config = assemble(recipe(dataset))
    precision, _ = resolve_precision(config.run.precision, resolve_device(config.run.device))
    return config if precision == "bf16" else assemble(recipe(dataset, precision))


def saved_config(run_dir: Path):
    """The TrainConfig the run in ``run_dir`` was trained with (its config.json), so that a
    resume keeps its recipe whatever this machine's recipe would be; None if there is none to
    read (then training refuses the resume with its own message)."""
    import json

    from difflab.config import ConfigError, from_dict, upgrade_legacy
    from difflab.files import inside

    path = inside(run_dir, "config.json")  # a link out of the run is refused, never read
    try:
        return from_dict(upgrade_legacy(json.loads(path.read_text()), str(path))[0])
    except (OSError, ValueError, TypeError, AttributeError, ConfigError):
        return None


def cmd_train(args) -> int:
    config = train_config(args)  # before anything heavy is imported: bad values answer at once
    from difflab.runs import train_run

    report = train_run(config, resume=args.resume, force=args.force)
    if report is not None:  # None on the ranks > 0 of a torchrun run
        print(f"report: {report}")
        print(f"samples: {Path(config.loop.out) / 'samples.png'}")
    return 0
