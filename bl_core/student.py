"""Student construction, gated-LoRA injection and freezing (DESIGN §2, §3).

The student keeps ``n`` of the teacher's ``L`` decoder layers, chosen by one of four
modes, plus the teacher's embeddings, final norm and LM head. It is built as a fresh
``n``-layer model of the same architecture whose weights are copied layer by layer, so
per-layer state (attention ``layer_idx`` for the KV cache, ``layer_types``) is right.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from bl_core.architecture import select_layers
from bl_core.config import TARGET_MODULES, ConfigError
from bl_core.errors import InputError
from bl_core.integrity import check_weights_dir
from bl_core.modules import GatedLoRALinear

_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layers)\.(?P<index>\d+)\.(?P<rest>.+)$")


def student_config(teacher_config: PretrainedConfig, indices: Sequence[int]) -> PretrainedConfig:
    """The teacher's config with depth ``len(indices)`` and per-layer lists subset."""
    config = copy.deepcopy(teacher_config)
    num_teacher_layers = teacher_config.num_hidden_layers
    config.num_hidden_layers = len(indices)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == num_teacher_layers:
        config.layer_types = [layer_types[i] for i in indices]
    # Recorded in config.json, so a reloaded student still says where it came from.
    config.bl_teacher_layer_indices = list(indices)
    config.bl_teacher_num_layers = num_teacher_layers
    return config


def build_student(
    teacher: PreTrainedModel | str | Path, num_layers: int, layer_selection: str = "mixed"
) -> PreTrainedModel:
    """Build an ``num_layers`` student warm-started from ``teacher`` (a model or a dir)."""
    if not isinstance(teacher, PreTrainedModel):
        teacher = load_pretrained(teacher)
    indices = select_layers(teacher.config.num_hidden_layers, num_layers, layer_selection)
    config = student_config(teacher.config, indices)
    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(config)
    teacher_state = teacher.state_dict()
    student_state = {}
    for key in student.state_dict():
        key_src = _teacher_key(key, indices)
        if key_src not in teacher_state:
            raise InputError(f"teacher checkpoint has no weight {key_src!r} for student {key!r}")
        student_state[key] = teacher_state[key_src].detach().clone()
    student.load_state_dict(student_state, strict=True, assign=True)
    # Non-persistent buffers (RoPE inv_freq) are not in state_dict: take the teacher's.
    teacher_buffers = dict(teacher.named_buffers())
    for name, buf in list(student.named_buffers()):
        if buf.is_meta:
            owner_name, _, attr = name.rpartition(".")
            source = teacher_buffers[_teacher_key(name, indices)].detach().clone()
            student.get_submodule(owner_name).register_buffer(attr, source, persistent=False)
    student.tie_weights()
    return student.to(next(teacher.parameters()).dtype).eval()


def _teacher_key(student_key: str, indices: Sequence[int]) -> str:
    """Map ``model.layers.{i}.x`` of the student to ``model.layers.{indices[i]}.x``."""
    match = _LAYER_KEY.match(student_key)
    if not match:
        return student_key
    return f"{match['prefix']}.{indices[int(match['index'])]}.{match['rest']}"


def load_pretrained(path: str | Path) -> PreTrainedModel:
    """Load a local Hugging Face causal LM directory (never remote code)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{str(path)!r} is not a model directory (no config.json)")
    check_weights_dir(path)  # a truncated file: one line naming it, not a SafetensorError
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)


def load_model_config(path: str | Path) -> PretrainedConfig:
    """A ``config.json`` file or a model directory, without loading weights."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{str(path)!r} has no config.json")
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    if not path.is_file():
        raise InputError(f"model config {str(path)!r} does not exist")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"model config {str(path)!r} is not a valid config.json: {err}") from None
    if "model_type" not in config_dict:
        raise InputError(f"model config {str(path)!r} has no 'model_type'")
    return AutoConfig.for_model(**config_dict)


def inject_gated_lora(
    model: nn.Module,
    rank: int,
    lora_alpha: float,
    dropout: float = 0.0,
    gate_init_logit: float = 3.0,
    targets: Sequence[str] = TARGET_MODULES,
    use_gates: bool = True,
) -> list[tuple[str, GatedLoRALinear]]:
    """Replace every targeted ``nn.Linear`` in place; return ``(name, module)`` pairs in
    ``named_modules()`` registration order (the controller's tie-break order, DESIGN §4)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear)
    ]
    missing = set(targets) - {name.rsplit(".", 1)[-1] for name, _ in found}
    if missing:
        raise ConfigError(
            f"lora.targets names {', '.join(sorted(missing))}, which this model "
            f"({type(model).__name__}) has no nn.Linear of"
        )
    gated = []
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = GatedLoRALinear(linear, rank, lora_alpha, dropout, gate_init_logit, use_gates)
        setattr(parent, child, module)
        gated.append((name, module))
    return gated


def gated_modules(model: nn.Module) -> list[tuple[str, GatedLoRALinear]]:
    """The model's gated modules in registration order (e.g. after loading a checkpoint)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]


def mark_only_lora_trainable(model: nn.Module) -> list[str]:
    """Freeze everything but LoRA factors and gates; return the trainable names."""
    trainable = []
    for name, param in model.named_parameters():
        keep = name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "gate_logits")
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable
