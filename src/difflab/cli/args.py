"""What the subcommands share: the one-line usage error, argparse with one-line errors, and
the checks of the sampling options common to ``sample`` and ``eval``."""
from __future__ import annotations

import argparse
from pathlib import Path

from difflab.options import MAX_STEPS, SAMPLERS, check_seed, check_steps
from difflab.training.run_dir import check_output


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown option, bad int, missing argument) as one line."""

    def error(self, message):
        where = "" if self.prog == "difflab" else f"{self.prog}: "  # the subcommand, if any
        self.exit(2, f"difflab: error: {where}{message}\n")


def check_steps_and_seed(steps: int | None, seed: int, max_steps: int = MAX_STEPS) -> None:
    """``--steps`` in [1, max_steps] (None: not given) and ``--seed`` in [0, 2^63), the range
    torch's generators take (``options.check_steps``, ``options.check_seed``)."""
    try:
        if steps is not None:
            check_steps(steps, "--steps", max_steps)
        check_seed(seed, "--seed")
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_sampling_args(args) -> None:
    """Ranges of the sampling options shared by ``sample`` and ``eval``, checked before loading."""
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {args.sampler!r} (choose from {', '.join(SAMPLERS)})")
    for name, value in (("--num-samples" if args.command == "sample" else "--n", args.n),
                        ("--batch-size", getattr(args, "batch_size", 1))):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    check_steps_and_seed(args.steps, args.seed)
    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    for name, suffix in (("out", ".png"), ("npz", ".npz"), ("json", ".json")):
        path = getattr(args, name, None)
        if path is not None and (Path(path).is_dir() or Path(path).suffix.lower() != suffix):
            raise UsageError(f"--{name} {path}: give a file name ending in {suffix}"
                             + (" (it is a directory)" if Path(path).is_dir() else ""))
        if path is not None:
            check_output(path, f"--{name}")
