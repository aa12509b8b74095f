"""Budgeted LoRA core: gated LoRA modules, the budget controller, compression,
costs and the distillation loss (pure PyTorch + transformers; see DESIGN.md)."""

from bl_core.config import (
    BudgetConfig,
    BudgetedLoRAConfig,
    CompressionConfig,
    ConfigError,
    KDConfig,
    LoRAConfig,
    StudentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)

__all__ = [
    "BudgetConfig",
    "BudgetedLoRAConfig",
    "CompressionConfig",
    "ConfigError",
    "KDConfig",
    "LoRAConfig",
    "StudentConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
]
