"""Budgeted LoRA core: gated LoRA modules, the budget controller, compression, costs,
the distillation loss, data, evaluation and the trainer (pure PyTorch + transformers +
datasets; no orchestration or tracking imports — see DESIGN.md and STYLE.md)."""

import bl_core.hf  # noqa: F401  (registers the compressed students with the Auto classes)
from bl_core.allocator import tune_cpu_allocator
from bl_core.checkpoint import load_causal_lm
from bl_core.compression import (
    ModulePlan,
    compress_model,
    load_compressed,
    plan_compression,
    save_compressed,
)
from bl_core.config import (
    BudgetConfig,
    BudgetedLoRAConfig,
    CompressionConfig,
    KDConfig,
    LoRAConfig,
    StudentConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from bl_core.controller import BudgetController, scheduled_fraction
from bl_core.costs import compression_summary, train_compute_proxy
from bl_core.errors import BLError, ConfigError, InputError
from bl_core.export import convert_legacy, load_export, save_export
from bl_core.losses import LossParts, distillation_loss
from bl_core.modules import GatedLoRALinear, LoRADropout, LowRankLinear
from bl_core.student import build_student, inject_gated_lora, mark_only_lora_trainable
from bl_core.training import TrainingError, train

__all__ = [
    "BLError",
    "BudgetConfig",
    "BudgetController",
    "BudgetedLoRAConfig",
    "CompressionConfig",
    "ConfigError",
    "GatedLoRALinear",
    "InputError",
    "KDConfig",
    "LoRAConfig",
    "LoRADropout",
    "LossParts",
    "LowRankLinear",
    "ModulePlan",
    "StudentConfig",
    "TrainConfig",
    "TrainingError",
    "apply_overrides",
    "build_student",
    "compress_model",
    "compression_summary",
    "config_from_dict",
    "convert_legacy",
    "distillation_loss",
    "inject_gated_lora",
    "load_causal_lm",
    "load_compressed",
    "load_config",
    "load_export",
    "mark_only_lora_trainable",
    "plan_compression",
    "save_compressed",
    "save_config",
    "save_export",
    "scheduled_fraction",
    "train",
    "train_compute_proxy",
    "tune_cpu_allocator",
]
