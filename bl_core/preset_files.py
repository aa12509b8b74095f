"""Named presets (YAML files shipped in ``bl_core/presets/``) and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bl_core.config import BudgetedLoRAConfig, apply_overrides, load_config
from bl_core.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str) -> tuple[BudgetedLoRAConfig, str]:
    """``(config, preset_name)`` for a preset name (``tiny``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_config(path), path.stem
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(
            f"config {name_or_path!r} is neither a YAML file nor a preset "
            f"(presets: {', '.join(available_presets())})"
        )
    return load_config(preset), name_or_path


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["budget.final_fraction=0.0", "lora.targets=[q_proj]"]`` -> dotted dict (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. lora.rank=64")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return out


def load_with_overrides(
    name_or_path: str, overrides: list[str] | None = None
) -> tuple[BudgetedLoRAConfig, str]:
    cfg, name = resolve_config(name_or_path)
    return apply_overrides(cfg, parse_overrides(overrides)), name
