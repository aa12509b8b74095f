"""The ``bl`` command line. Each subcommand lives in its own module exposing
``add_parser(subparsers)``; the parser's ``func`` runs it and returns an exit code.
The console script (``flows/cli.py``) adds the Prefect-backed ``grid`` subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from bl_core.allocator import tune_cpu_allocator
from bl_core.errors import BLError

SUBCOMMANDS = ("plan", "train", "eval", "export")


def build_parser(
    extra: Sequence[Callable[[argparse._SubParsersAction], None]] = (),
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bl", description="Budgeted LoRA: distil, budget and compress a student LLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"bl_core.cli.{name}").add_parser(sub)
    for add in extra:
        add(sub)
    return parser


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # process-wide: training and evaluation on CPU run much faster
    try:
        return int(args.func(args) or 0)
    except BLError as err:
        print(f"bl {args.command}: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
