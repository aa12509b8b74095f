"""Building a model skeleton without weights and filling it from safetensors — the one
loading path for compressed and trained students (nothing is ever unpickled)."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from bl_core.errors import InputError


def empty_model(model_dir: str | Path) -> PreTrainedModel:
    """The architecture in ``model_dir/config.json`` with parameters on the meta device
    (buffers such as RoPE frequencies are real). Never runs remote code."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def assign_weights(
    model: PreTrainedModel, weights_path: Path, device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """Load ``weights_path`` into a (partly) meta-device model; every parameter must be
    filled, except tied ones, which are re-tied."""
    if not weights_path.is_file():
        raise InputError(f"{str(weights_path)!r} does not exist")
    result = model.load_state_dict(
        load_file(str(weights_path), device=str(device)), strict=False, assign=True
    )
    if result.unexpected_keys:
        raise InputError(f"{weights_path}: unexpected weights {result.unexpected_keys[:5]}")
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise InputError(f"{weights_path}: missing weights {missing[:5]}")
    return model.to(device).eval()
