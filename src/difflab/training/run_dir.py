"""The run directory: the files a run owns, claiming the directory for training (checks, then an
exclusive lock: one writer at a time), and keeping other commands' outputs off a run's files.

A run directory holds ``checkpoint.json`` and ``checkpoint-<step>.safetensors``
(``checkpoint.py``), ``schedules.json`` (``diffusion/schedule_store.py``), the outputs in
``RUN_OUTPUTS``, ``samples/step-<step>.png`` and ``MARKER``, written when a run starts and
locked (``fcntl.flock``) while a process trains or finishes it. Every one of these paths is
formed with ``files.inside``, so none resolves outside the directory. Standard library only.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from difflab.files import TEMP_MARK, inside

INDEX = "checkpoint.json"
WEIGHTS_NAME = re.compile(r"checkpoint-\d+\.safetensors")  # exactly; nothing else is deleted
MARKER = ".difflab-run"  # written when a run starts, before its first checkpoint; the lock file
SAMPLES = "samples"      # sample grids written during training
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "report.md", "samples.png", "samples.npz",
               "loss.png")
RUN_FILES = (INDEX, "schedules.json", MARKER, *RUN_OUTPUTS)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a difflab run directory (a checkpoint, or a run that started)."""
    return (path / INDEX).is_file() or (path / MARKER).is_file()


def run_entries(out: Path) -> list[Path]:
    """Every path of ``out`` that a run reads, writes or deletes, checked with ``inside``
    (ValueError on the first that resolves outside ``out``)."""
    names = [*RUN_FILES, SAMPLES]
    if out.is_dir():
        names += [p.name for p in out.iterdir() if WEIGHTS_NAME.fullmatch(p.name)]
    paths = [inside(out, name) for name in names]
    if (out / SAMPLES).is_dir():
        paths += [inside(out, SAMPLES, p.name) for p in (out / SAMPLES).iterdir()]
    return paths


def check_output(path, option: str) -> None:
    """A command's output file (``sample --out/--npz``, ``eval --json``, a restoration) must not
    be a file of a run directory (its checkpoint, weights, config, log, report, samples):
    writing it would change or break the run. One-line ValueError naming ``option``."""
    path = Path(path).expanduser()
    folder = path.parent
    owned = path.name in RUN_FILES or WEIGHTS_NAME.fullmatch(path.name)
    if folder.name == SAMPLES and is_run_dir(folder.parent):
        folder, owned = folder.parent, True
    if owned and is_run_dir(folder):
        raise ValueError(f"{option} {path}: is a file of the run in {folder}; writing it would "
                         "change or break the run; choose another name")


def lock_run(out: Path):
    """An exclusive lock on the run in ``out`` (``MARKER``, created if needed), as the open file
    that holds it: close it, or use it in a with-statement, to release it. ValueError at once
    (no waiting) if another process holds it."""
    out = Path(out)
    fd = os.open(inside(out, MARKER), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"{out}: another difflab process is training or finishing this run; "
                         "wait for it to end, or choose another --out") from None
    return os.fdopen(fd, "rb+")


def claim_run_dir(out: Path, resume: bool, force: bool = False):
    """Make ``out`` ready for a run and lock it, or raise ValueError without touching anything;
    returns the lock (``lock_run``).

    - A path that exists and is not a directory is an error, and so is any file of a run
      (``run_entries``) that resolves outside ``out`` (a symbolic link).
    - ``resume``: ``out`` must hold a checkpoint.
    - A new run: a directory with a checkpoint is refused (pass resume); a directory holding
      files of something else is refused unless ``force``; a run that was killed before its first
      checkpoint (``MARKER`` but no checkpoint) is started again from a clean log.
    - Another process training or finishing the run (the lock is taken) is an error.
    Temporary files of writes that a kill interrupted are removed once the lock is held."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory (choose another --out)")
    run_entries(out)
    has_checkpoint = (out / INDEX).is_file()
    if resume and not has_checkpoint:
        raise ValueError(f"{out}: no checkpoint to resume ({INDEX} not found); start it "
                         "without --resume")
    if has_checkpoint and not resume:
        raise ValueError(f"{out}: run directory already has a checkpoint; pass --resume to "
                         "continue it or choose another --out")
    started = (out / MARKER).is_file()
    if not resume and out.is_dir() and any(out.iterdir()) and not started and not force:
        raise ValueError(f"{out}: directory is not empty and is not a difflab run (no {INDEX}); "
                         "choose another --out, or pass --force to write into it")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run(out)
    if has_checkpoint or started:
        for folder in (out, out / SAMPLES):
            for stale in folder.glob(f".*{TEMP_MARK}*") if folder.is_dir() else ():
                stale.unlink(missing_ok=True)
    if started and not has_checkpoint:  # killed before its first checkpoint: start clean
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / SAMPLES, ignore_errors=True)
    return lock
