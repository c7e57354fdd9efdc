"""What the subcommands share: the one-line usage error, argparse with one-line errors, and
the checks of the sampling options common to ``sample`` and ``eval``."""
from __future__ import annotations

import argparse
from pathlib import Path


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown option, bad int, missing argument) as one line."""

    def error(self, message):
        where = "" if self.prog == "difflab" else f"{self.prog}: "  # the subcommand, if any
        self.exit(2, f"difflab: error: {where}{message}\n")


def check_steps_and_seed(steps: int | None, seed: int, max_steps: int | None = None) -> None:
    """``--steps`` in [1, max_steps] (default ``generation.MAX_STEPS``; None: not given) and
    ``--seed`` in [0, 2^63), the range torch's generators take."""
    from difflab.diffusion.generation import MAX_STEPS

    max_steps = MAX_STEPS if max_steps is None else max_steps
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if steps is not None and steps > max_steps:
        raise UsageError(f"--steps must be at most {max_steps}, got {steps}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63), got {seed}")


def check_sampling_args(args) -> None:
    """Ranges of the sampling options shared by ``sample`` and ``eval``, checked before loading."""
    from difflab.diffusion.generation import get_sampler

    if args.sampler is not None:
        get_sampler(args.sampler)
    for name, value in (("--n", args.n), ("--batch-size", getattr(args, "batch_size", 1))):
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
