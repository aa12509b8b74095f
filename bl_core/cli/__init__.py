"""The ``bl`` command line. Each subcommand lives in its own module exposing
``add_parser(subparsers)``; the parser's ``func`` runs it and returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

from bl_core.errors import BLError

SUBCOMMANDS = ("plan", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bl", description="Budgeted LoRA: distil, budget and compress a student LLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"bl_core.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BLError as err:
        print(f"bl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
