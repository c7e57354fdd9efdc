"""Command line: ``difflab SUBCOMMAND ...`` (also ``python -m difflab``).

All argument parsing lives in this package (one module per group of commands); each command
calls the module that does the work.

``difflab train`` reaches every config field with ``--set section.field=value``; its flags are
shorthands for the common fields, declared in ``TRAIN_FLAGS`` against the config dataclasses (a
flag whose field does not exist fails at parser build time, and a test builds the parser), and
their values go through the same coercion and validation as ``--set``. Expected failures (bad
input, missing or unreadable files, divergence) print one line ``difflab: error: ...`` and exit
with status 2; no traceback.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import warnings

from difflab.cli.args import Parser, UsageError
from difflab.cli.bench import add_bench_parser
from difflab.cli.restore import add_restore_parsers
from difflab.cli.sample import add_eval_parser, add_sample_parser, add_schedule_parser
from difflab.cli.train import TRAIN_FLAGS, add_train_parser, config_field, train_config

__all__ = ["TRAIN_FLAGS", "Parser", "UsageError", "build_parser", "config_field", "main",
           "train_config"]


OUT_OF_MEMORY = ("out of memory (lower --num-samples, --batch-size, the number or size of the "
                 "images, or optim.batch_size)")


def build_parser() -> Parser:
    parser = Parser(prog="difflab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for add in (add_train_parser, add_sample_parser, add_eval_parser, add_schedule_parser,
                add_restore_parsers, add_bench_parser):
        add(sub)
    return parser


def one_line_warnings(default, message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` for the CLI: our own warnings (e.g. a skipped line of a bench
    results file) as one line ``difflab: warning: ...``; others through ``default``."""
    from difflab.bench.records import RecordWarning

    if issubclass(category, RecordWarning):
        print(f"difflab: warning: {message}", file=sys.stderr)
    else:
        default(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def terminate_as_interrupt():
    """While a command runs, SIGTERM (``kill``, torchrun stopping its workers) ends it as Ctrl-C
    does: the stack unwinds, so a write in progress removes its temporary file and nothing
    partial is left under a final name (``files.write_atomic``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, print its failure as one line. Parsing and argument errors
    import nothing heavy (no torch): each command imports what it needs when it runs."""
    from difflab.training import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), terminate_as_interrupt():
            warnings.showwarning = functools.partial(one_line_warnings, warnings.showwarning)
            code = int(args.func(args) or 0)
        # under torchrun: leave the process group before interpreter exit (only a command that
        # imported difflab.training.distributed can have joined one)
        distributed = sys.modules.get("difflab.training.distributed")
        if distributed is not None:
            distributed.destroy()
        return code
    except (ValueError, TrainingError) as e:  # our errors: config, data, checkpoint, metrics
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"difflab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"difflab: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's CPU allocator reports running out as a RuntimeError
        if "can't allocate memory" not in str(e) and "not enough memory" not in str(e):
            raise
        print(f"difflab: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
