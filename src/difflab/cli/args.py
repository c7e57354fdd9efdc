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
        self.exit(2, f"difflab: error: {self.prog}: {message}\n")


def check_sampling_args(args) -> None:
    """Ranges of the sampling options shared by ``sample`` and ``eval``, checked before loading."""
    from difflab.diffusion.generation import MAX_STEPS, get_sampler

    if args.sampler is not None:
        get_sampler(args.sampler)
    for name, value, low in (("--n", args.n, 1), ("--steps", args.steps, 1),
                             ("--batch-size", getattr(args, "batch_size", 1), 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if args.steps is not None and args.steps > MAX_STEPS:
        raise UsageError(f"--steps must be at most {MAX_STEPS}, got {args.steps}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63), got {args.seed}")
    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    for name, suffix in (("out", ".png"), ("npz", ".npz"), ("json", ".json")):
        path = getattr(args, name, None)
        if path is not None and (Path(path).is_dir() or Path(path).suffix.lower() != suffix):
            raise UsageError(f"--{name} {path}: give a file name ending in {suffix}"
                             + (" (it is a directory)" if Path(path).is_dir() else ""))
