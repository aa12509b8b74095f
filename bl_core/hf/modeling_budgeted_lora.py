"""Budgeted LoRA compressed students as ordinary transformers models (DESIGN §5).

A compressed student is a stock Llama, Mistral or Qwen2 model in which some linear
projections were replaced, after training, by a two-linear low-rank operator
``y = up(down(x))`` (the drop and svd forms); every other projection is the stock dense
``nn.Linear`` (the keep form). This file is the whole modeling code: it imports only torch
and transformers, so it runs where the Budgeted LoRA project is not installed, and it is
copied beside every exported ``config.json``, which names it in ``auto_map``.

``config.json`` is the base architecture's own config with its own ``model_type``
(``budgeted_lora_llama``, ``budgeted_lora_mistral``, ``budgeted_lora_qwen2``: plain
transformers then refuses the directory instead of building a dense model with random
projections) and one field, per adapted module (names relative to ``*ForCausalLM``)::

    "compressed_modules": {
        "model.layers.0.self_attn.q_proj": {"form": "low_rank", "rank": 16, "bias": false},
        "model.layers.1.mlp.down_proj":    {"form": "dense",    "rank": 0,  "bias": false},
        ...
    }

Attention, RoPE, the KV cache and generation are the stock classes': attention goes
through transformers' attention-function registry and passes its keyword arguments on,
which is what vLLM's Transformers backend needs (``_supports_attention_backend``).
Weights keep the project's names: ``<module>.down.weight`` (rank, d_in),
``<module>.up.weight`` (d_out, rank) and, where the base projection had one,
``<module>.up.bias`` (d_out,).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
)

FORMS = ("dense", "low_rank")


class LowRankLinear(nn.Module):
    """Two stacked linears ``d_in -> rank -> d_out``: the drop and svd forms of DESIGN §5.

    Weights: ``down.weight`` (rank, d_in), ``up.weight`` (d_out, rank), optional
    ``up.bias`` (d_out,). Contains no gates, no retention, no controller.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def dense_weight(self) -> Tensor:
        """The dense equivalent ``up @ down`` (for inspection; forward never builds it)."""
        return self.up.weight @ self.down.weight

    def forward(self, x: Tensor) -> Tensor:  # (..., d_in) -> (..., d_out)
        # F.linear on the weights directly: two GEMMs, no nested module calls (~5 us per
        # module saved on CPU, which matters at decode time for small students).
        return F.linear(F.linear(x, self.down.weight), self.up.weight, self.up.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def compressed_module_specs(config: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """``config.compressed_modules`` for the names under ``prefix``, with ``prefix`` removed;
    each entry checked (form, rank)."""
    specs = getattr(config, "compressed_modules", None) or {}
    out = {}
    for name, spec in specs.items():
        form, rank = spec.get("form"), spec.get("rank")
        if form not in FORMS or not isinstance(rank, int) or rank < int(form == "low_rank"):
            raise ValueError(
                f"compressed_modules[{name!r}]={spec!r}: needs a form in {FORMS} and a rank "
                "(>= 1 for low_rank)"
            )
        if name.startswith(prefix):
            out[name[len(prefix) :]] = spec
    return out


def apply_compressed_modules(model: nn.Module, config: Any, prefix: str = "") -> None:
    """Replace, in place, each ``low_rank`` projection of ``config.compressed_modules`` by a
    :class:`LowRankLinear` on the replaced layer's device and dtype; check that every
    ``dense`` one is the stock ``nn.Linear`` with the recorded bias."""
    for name, spec in compressed_module_specs(config, prefix).items():
        where = f"compressed_modules[{prefix + name!r}]"
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: {type(model).__name__} has no such module") from None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{where}: expected an nn.Linear, found {type(linear).__name__}")
        bias = bool(spec.get("bias", False))
        if spec["form"] == "dense":
            if (linear.bias is not None) != bias:
                raise ValueError(f"{where}: bias={bias} does not match the architecture")
            continue
        low_rank = LowRankLinear(
            linear.in_features,
            linear.out_features,
            spec["rank"],
            bias=bias,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, low_rank)


def auto_map(config_cls: type) -> dict[str, str]:
    """The ``auto_map`` naming this file's classes for ``config_cls``'s architecture, in the
    order vLLM loads them (config first). ``AutoModel`` is the one vLLM builds."""
    module = __name__.rsplit(".", 1)[-1]  # the file name, wherever it was imported from
    for config, base, causal in ARCHITECTURES.values():
        if issubclass(config_cls, config):
            return {
                "AutoConfig": f"{module}.{config.__name__}",
                "AutoModel": f"{module}.{base.__name__}",
                "AutoModelForCausalLM": f"{module}.{causal.__name__}",
            }
    raise ValueError(f"{config_cls.__name__} is not a Budgeted LoRA config")


class _CompressedModel:
    """Mixin: the compressed projections are swapped in ``post_init``, before transformers
    initialises weights and gathers tied keys and parallel plans, so the stock ``__init__``
    (embeddings, decoder layers, RoPE, LM head) runs unchanged. The config's ``auto_map``
    is completed, so ``save_pretrained`` writes a directory that loads anywhere."""

    _compressed_prefix = ""  # where the config's module names start, seen from this class

    def post_init(self) -> None:
        apply_compressed_modules(self, self.config, self._compressed_prefix)
        self.config.auto_map = auto_map(type(self.config)) | (
            getattr(self.config, "auto_map", None) or {}
        )
        super().post_init()


# -- one config, base model and causal LM per supported architecture ----------------------
# A tensor-parallel plan would shard ``down`` and ``up`` as if each were the whole
# projection: the compressed configs carry none (tensor parallel size 1 is what is tested).


class BudgetedLoRALlamaConfig(LlamaConfig):
    model_type = "budgeted_lora_llama"
    base_model_tp_plan = None
    _auto_class = "AutoConfig"


class BudgetedLoRALlamaModel(_CompressedModel, LlamaModel):
    config_class = BudgetedLoRALlamaConfig
    _compressed_prefix = "model."
    _supports_attention_backend = True
    _auto_class = "AutoModel"


class BudgetedLoRALlamaForCausalLM(_CompressedModel, LlamaForCausalLM):
    config_class = BudgetedLoRALlamaConfig
    _supports_attention_backend = True
    _auto_class = "AutoModelForCausalLM"


class BudgetedLoRAMistralConfig(MistralConfig):
    model_type = "budgeted_lora_mistral"
    base_model_tp_plan = None
    _auto_class = "AutoConfig"


class BudgetedLoRAMistralModel(_CompressedModel, MistralModel):
    config_class = BudgetedLoRAMistralConfig
    _compressed_prefix = "model."
    _supports_attention_backend = True
    _auto_class = "AutoModel"


class BudgetedLoRAMistralForCausalLM(_CompressedModel, MistralForCausalLM):
    config_class = BudgetedLoRAMistralConfig
    _supports_attention_backend = True
    _auto_class = "AutoModelForCausalLM"


class BudgetedLoRAQwen2Config(Qwen2Config):
    model_type = "budgeted_lora_qwen2"
    base_model_tp_plan = None
    _auto_class = "AutoConfig"


class BudgetedLoRAQwen2Model(_CompressedModel, Qwen2Model):
    config_class = BudgetedLoRAQwen2Config
    _compressed_prefix = "model."
    _supports_attention_backend = True
    _auto_class = "AutoModel"


class BudgetedLoRAQwen2ForCausalLM(_CompressedModel, Qwen2ForCausalLM):
    config_class = BudgetedLoRAQwen2Config
    _supports_attention_backend = True
    _auto_class = "AutoModelForCausalLM"


# base model_type -> (config, base model, causal LM); auto_map names these classes.
ARCHITECTURES: dict[str, tuple[type, type, type]] = {
    "llama": (BudgetedLoRALlamaConfig, BudgetedLoRALlamaModel, BudgetedLoRALlamaForCausalLM),
    "mistral": (
        BudgetedLoRAMistralConfig,
        BudgetedLoRAMistralModel,
        BudgetedLoRAMistralForCausalLM,
    ),
    "qwen2": (BudgetedLoRAQwen2Config, BudgetedLoRAQwen2Model, BudgetedLoRAQwen2ForCausalLM),
}
