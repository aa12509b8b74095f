"""``bl grid`` / ``bl scaling`` checks that run before any Prefect server or stage starts:
the resolved configuration (preset + ``--set`` + the flow's convenience flags) through
:func:`bl_core.validate.validate_config`, and the output directory. Imports no Prefect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bl_core.config import BudgetedLoRAConfig, apply_overrides
from bl_core.preset_files import resolve_config
from bl_core.validate import check_output_dir, validate_config


def grid_config(
    config: str,
    overrides: dict[str, Any] | None,
    methods: list[str] | None,
    budgets: list[float] | None,
    seeds: list[int] | None,
) -> tuple[BudgetedLoRAConfig, str]:
    """Preset or YAML + dotted overrides + the flow's convenience parameters."""
    cfg, preset = resolve_config(config)
    changes = dict(overrides or {})
    if methods is not None:
        changes["grid.methods"] = list(methods)
    if budgets is not None:
        changes["grid.budgets"] = list(budgets)
    if seeds is not None:
        changes["pipeline.seeds"] = list(seeds)
    return apply_overrides(cfg, changes), preset


def validate_grid_args(
    args: argparse.Namespace, overrides: dict[str, Any], out: Path
) -> BudgetedLoRAConfig:
    """Everything ``bl grid`` can know before it starts; raises a one-line BLError.
    Returns the resolved configuration."""
    cfg, _ = grid_config(args.config, overrides, args.methods, args.budgets, args.seeds)
    validate_config(cfg, selected_teachers=args.teachers)
    check_output_dir(out)
    return cfg


def validate_scaling_args(args: argparse.Namespace, overrides: dict[str, Any], out: Path) -> None:
    cfg, _ = grid_config(args.config, overrides, None, args.budgets, args.seeds)
    validate_config(cfg, grid=False, selected_teachers=[args.teacher] if args.teacher else None)
    check_output_dir(out)


def validate_train_args(args: argparse.Namespace, out: Path) -> None:
    """``bl train``: the ladder rungs it needs, its output directory."""
    from bl_core.preset_files import parse_overrides

    cfg, _ = grid_config(args.config, parse_overrides(args.set), None, None, None)
    selected = [args.teacher] if args.teacher else None
    validate_config(cfg, grid=False, selected_teachers=selected)
    check_output_dir(out)
