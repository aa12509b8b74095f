"""Saving model weights and filling a model skeleton from them — the one weights format for
trained students, checkpoints and compressed students (safetensors; nothing is ever pickled).

Tied parameters (``tie_word_embeddings``: the LM head *is* the input embedding, as in
Llama-3.2, Qwen2.5 and SmolLM) are saved once, under the name Hugging Face keeps (the tie's
source, ``model.embed_tokens.weight``), and re-tied on load. Loading also accepts files that
hold the other name of a tied pair (safetensors' ``save_model`` keeps whichever name it
meets first), so older outputs still load.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from bl_core.errors import InputError
from bl_core.io import default_mode


def tied_weight_names(model: nn.Module) -> dict[str, str]:
    """``{target: source}`` of the model's tied parameters (``{}`` when nothing is tied)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {t: s for t, s in tied.items() if _shares_storage(model, t, s)}


def _shares_storage(model: nn.Module, target: str, source: str) -> bool:
    try:
        return model.get_parameter(target) is model.get_parameter(source)
    except AttributeError:
        return False


def weights_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors to save: the state dict without the targets of tied parameters."""
    state = model.state_dict()
    for target in tied_weight_names(model):
        state.pop(target, None)
    return {name: tensor.detach().contiguous() for name, tensor in state.items()}


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s weights to a safetensors file, each tied parameter once."""
    save_file(weights_state(model), str(path), metadata={"format": "pt"})
    os.chmod(path, default_mode(directory=False))  # save_file makes it 0600 (issue 17)


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A safetensors file's tensors; a missing or damaged file is an :class:`InputError`
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise InputError(f"weights file {str(path)!r} is damaged or unreadable: {err}") from None


def empty_model(model_dir: str | Path) -> PreTrainedModel:
    """The architecture in ``model_dir/config.json`` with parameters on the meta device
    (buffers such as RoPE frequencies are real). Never runs remote code."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def retie(model: nn.Module, present: set[str]) -> None:
    """Tie each tied pair of ``model`` to whichever one of its two names ``present`` holds
    (a file with both keeps both as saved)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in tied.items():
        if source not in present and target in present:
            target, source = source, target
        if source in present and target not in present:
            owner, _, attr = target.rpartition(".")
            setattr(model.get_submodule(owner), attr, model.get_parameter(source))


def assign_weights(
    model: PreTrainedModel, weights_path: Path, device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """Load ``weights_path`` into a (partly) meta-device model; every parameter must be
    filled, except tied ones, which are re-tied."""
    assign_state(model, read_weights(weights_path, device), str(weights_path))
    return model.to(device).eval()


def assign_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Assign ``state`` (as :func:`weights_state` gives it) to a (partly) meta-device model:
    every parameter filled, tied ones re-tied; ``source`` names it in errors."""
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise InputError(f"{source}: unexpected weights {result.unexpected_keys[:5]}")
    retie(model, set(state))
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if missing:
        raise InputError(f"{source}: missing weights {missing[:5]}")
