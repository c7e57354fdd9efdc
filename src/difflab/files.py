"""Writing and naming files safely: every output is written to a temporary name beside it and
renamed into place (``write_atomic``), and a path formed inside a directory (a run's files)
never resolves outside it (``inside``).

Standard library only, so that anything may use it without importing torch.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

# errors of a full disk, a quota or a file-size limit (RLIMIT_FSIZE): "free space" fixes them
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
TEMP_MARK = ".tmp-"  # temporary names: ".<name>.tmp-<pid>-<random>"


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (hidden, this process's id and a random part)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def write_atomic(path, content) -> Path:
    """Write ``content`` (bytes, str, or a function that writes into the binary file object it
    is given) to ``path`` as a whole or not at all: into a temporary file beside it, flushed to
    disk, then renamed over ``path``. A kill leaves the previous file (or none) under the
    final name; an error removes the temporary file and is raised again, a full disk or a
    file-size limit as one OSError naming ``path``. A symbolic link at ``path`` is replaced,
    never written through."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _named(e, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_figure(figure, path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at ``path``, atomically (``write_atomic``)."""
    return write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def append_line(path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (a log; readers skip a line a kill tore), with
    a full disk as one OSError naming ``path``."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise _named(e, Path(path)) from None


def _named(error: OSError, path: Path) -> OSError:
    """``error``, or for a full disk or a file-size limit one that says what to free."""
    if error.errno not in NO_SPACE:
        return error
    return OSError(error.errno, f"no space to write it ({error.strerror}); free disk space (or "
                   "raise the file-size limit) and run the command again", str(path))


def inside(root, *parts: str) -> Path:
    """``root/parts...``, refused with a one-line ValueError if it, or the folder it is in,
    resolves outside ``root`` (a symbolic link that escapes it, or ``..``). What a run
    directory names (weights, schedules, logs, samples) is read and written through this."""
    root = Path(root)
    path = root.joinpath(*parts)
    base = root.resolve()
    for candidate in (path.parent, path):
        resolved = candidate.resolve()
        if resolved != base and base not in resolved.parents:
            link = next((p for p in (path.parent, path) if p.is_symlink()), candidate)
            raise ValueError(f"{link}: resolves to {resolved}, outside the run directory "
                             f"{root} (a symbolic link?); refusing to read or write through it")
    return path
