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

import functools
import sys
import warnings

from difflab.cli.args import Parser, UsageError
from difflab.cli.bench import add_bench_parser
from difflab.cli.restore import add_restore_parsers
from difflab.cli.sample import add_eval_parser, add_sample_parser, add_schedule_parser
from difflab.cli.train import TRAIN_FLAGS, add_train_parser, config_field, train_config

__all__ = ["TRAIN_FLAGS", "Parser", "UsageError", "build_parser", "config_field", "main",
           "train_config"]


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


def main(argv: list[str] | None = None) -> int:
    from difflab.training import distributed
    from difflab.training.train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(one_line_warnings, warnings.showwarning)
            code = int(args.func(args) or 0)
        distributed.destroy()  # under torchrun: leave the process group before interpreter exit
        return code
    except (ValueError, TrainingError) as e:  # our errors: config, data, checkpoint, metrics
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"difflab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("difflab: error: out of memory (lower --n, --batch-size or optim.batch_size)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
