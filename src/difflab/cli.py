"""Command line: ``difflab SUBCOMMAND ...`` (also ``python -m difflab``).

Each subcommand parses its arguments here and calls one function of the module that does the
work. Expected failures (bad input, missing files) print one line ``difflab: error: ...`` and exit
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys

from difflab.data import DataError


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from difflab.bench import add_bench_parser
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, UsageError, ValueError, FileNotFoundError) as e:
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130
