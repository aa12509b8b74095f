"""Budgeted LoRA core: gated LoRA modules, the budget controller, compression, costs,
the distillation loss, data, evaluation and the trainer (pure PyTorch + transformers +
datasets; no orchestration or tracking imports — see DESIGN.md and STYLE.md).

The public API is imported lazily (PEP 562): ``import bl_core`` costs nothing, so
``bl --help`` does not wait for torch. Loading any model module (``bl_core.checkpoint``,
``bl_core.export``, ``bl_core.modules``) registers the compressed students with the Auto
classes (``bl_core.hf``)."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "BLError": "bl_core.errors",
    "BudgetConfig": "bl_core.config",
    "BudgetController": "bl_core.controller",
    "BudgetedLoRAConfig": "bl_core.config",
    "CompressionConfig": "bl_core.config",
    "ConfigError": "bl_core.errors",
    "GatedLoRALinear": "bl_core.modules",
    "InputError": "bl_core.errors",
    "KDConfig": "bl_core.config",
    "LoRAConfig": "bl_core.config",
    "LoRADropout": "bl_core.modules",
    "LossParts": "bl_core.losses",
    "LowRankLinear": "bl_core.modules",
    "ModulePlan": "bl_core.forms",
    "StudentConfig": "bl_core.config",
    "TrainConfig": "bl_core.config",
    "TrainingError": "bl_core.training",
    "apply_overrides": "bl_core.config",
    "build_student": "bl_core.student",
    "compress_model": "bl_core.compression",
    "compression_summary": "bl_core.costs",
    "config_from_dict": "bl_core.config",
    "convert_legacy": "bl_core.export",
    "distillation_loss": "bl_core.losses",
    "inject_gated_lora": "bl_core.student",
    "load_causal_lm": "bl_core.checkpoint",
    "load_compressed": "bl_core.compression",
    "load_config": "bl_core.config",
    "load_export": "bl_core.export",
    "mark_only_lora_trainable": "bl_core.student",
    "plan_compression": "bl_core.compression",
    "save_compressed": "bl_core.compression",
    "save_config": "bl_core.config",
    "save_export": "bl_core.export",
    "scheduled_fraction": "bl_core.controller",
    "train": "bl_core.training",
    "train_compute_proxy": "bl_core.costs",
    "tune_cpu_allocator": "bl_core.allocator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bl_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
