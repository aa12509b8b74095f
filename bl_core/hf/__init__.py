"""The compressed student's Hugging Face classes, registered with the transformers Auto
classes when the project is imported, so ``AutoModelForCausalLM.from_pretrained(dir)``
opens an exported student without remote code.

The modeling code itself is :mod:`bl_core.hf.modeling_budgeted_lora`, standalone (torch and
transformers only) because every export ships a copy of it for users without the project.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from bl_core.hf import modeling_budgeted_lora as modeling

MODELING_FILE = Path(modeling.__file__)


def register_auto_classes() -> None:
    """Register each architecture's config, base model (vLLM builds ``AutoModel``) and
    causal LM; idempotent."""
    for config_cls, base_cls, causal_cls in modeling.ARCHITECTURES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, base_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, causal_cls, exist_ok=True)


def auto_map(base_model_type: str) -> dict[str, str]:
    """The ``auto_map`` of an export of a ``base_model_type`` student."""
    return modeling.auto_map(modeling.ARCHITECTURES[base_model_type][0])


register_auto_classes()
