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


def looks_like_path(name_or_path: str) -> bool:
    """A ``--config`` value is a path if it contains ``/`` or ends in ``.yaml``/``.yml``;
    anything else is a preset name (a same-named file or directory in the working
    directory does not shadow a preset)."""
    return "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))


def config_path(name_or_path: str) -> Path:
    """The YAML file a ``--config`` value names (see :func:`looks_like_path`); resolve it
    once, before any work, and pass the path on."""
    if looks_like_path(name_or_path):
        return Path(name_or_path).resolve()
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        hint = f"; for a file, write ./{name_or_path}" if Path(name_or_path).is_file() else ""
        raise ConfigError(
            f"config {name_or_path!r} is not a preset (presets: "
            f"{', '.join(available_presets())}) nor a path (a path contains '/' or ends in "
            f".yaml){hint}"
        )
    return preset


def resolve_config(name_or_path: str) -> tuple[BudgetedLoRAConfig, str]:
    """``(config, preset_name)`` for a preset name (``tiny``) or a YAML path
    (``configs/mine.yaml``, ``./mine.yaml``): see :func:`looks_like_path`. The name is the
    file's stem, so a resolved preset path gives the preset's name again."""
    if looks_like_path(name_or_path) and not Path(name_or_path).is_file():
        return load_config(name_or_path), Path(name_or_path).stem  # names the missing file
    path = config_path(name_or_path)
    return load_config(path), path.stem


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
