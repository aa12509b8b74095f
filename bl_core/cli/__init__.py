"""The ``bl`` command line. Each subcommand lives in its own module exposing
``add_parser(subparsers)``; the parser's ``func`` runs it and returns an exit code.
The console script (``flows/cli.py``) adds the Prefect-backed ``grid``, ``train`` and
``scaling`` subcommands.

One convention for every subcommand that reads a config: ``--config`` (a preset name or a
YAML path), ``--set section.field=value`` (repeatable) and ``--out``. Parsers import
nothing heavy: torch, transformers and Prefect load in ``run`` only, so ``bl --help`` and
``bl <cmd> --help`` answer at once."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bl_core.allocator import tune_cpu_allocator
from bl_core.errors import BLError

if TYPE_CHECKING:
    from bl_core.config import BudgetedLoRAConfig

SUBCOMMANDS = ("plan", "eval", "export")


def add_config_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--config`` and ``--set``, the same for every subcommand."""
    shown = f" (default {default})" if default else " (default: the built-in defaults)"
    p.add_argument(
        "--config",
        default=default,
        help=f"preset name, or a YAML path (contains '/' or ends in .yaml){shown}",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override, e.g. --set train.learning_rate=1e-3 (repeatable)",
    )


def load_config_arguments(
    args: argparse.Namespace, extra: dict | None = None
) -> tuple[BudgetedLoRAConfig, str | None]:
    """``(config, preset name)`` from ``--config`` and ``--set`` (then ``extra`` dotted
    overrides from a command's own flags); validated before any work."""
    from bl_core.config import apply_overrides, config_from_dict
    from bl_core.preset_files import parse_overrides, resolve_config

    cfg, preset = resolve_config(args.config) if args.config else (config_from_dict({}), None)
    return apply_overrides(cfg, parse_overrides(args.set) | dict(extra or {})), preset


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
