"""Post-training compression (DESIGN §5, paper §3.3 eqs. 6-8).

Per gated module: harden the rank gates (keep ``g_i >= tau_rank``, at least the
largest), then pick the deployment form from the final retention ``alpha``:

    drop  alpha <  tau_drop           y = B' A' x                      rank r'
    svd   tau_drop <= alpha < tau_svd  y = [U_k S^½, B'] [S^½ V_kᵀ; A'] x  rank k + r'
    keep  alpha >= tau_svd            y = (alpha W0 + B' A') x          dense

with ``A' = A[kept]``, ``B' = scale * B[:, kept] * g[kept]`` and
``k = min(k_max, max(1, ceil(k_max * alpha / tau_svd)))``. The result holds only
``nn.Linear`` and :class:`~bl_core.modules.LowRankLinear`, and is saved as a Hugging
Face model directory (:mod:`bl_core.export`) that reloads without gates or controller.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from bl_core.config import CompressionConfig
from bl_core.costs import compression_summary
from bl_core.errors import InputError
from bl_core.forms import ModulePlan, plan_projection
from bl_core.modules import GatedLoRALinear, LowRankLinear

MANIFEST_NAME = "bl_manifest.json"
MANIFEST_FORMAT = "budgeted-lora-compressed"
WEIGHTS_NAME = "model.safetensors"


def kept_ranks(gates: Tensor, tau_rank: float) -> Tensor:
    """Indices of ranks whose gate is ``>= tau_rank``; at least the largest one."""
    kept = torch.nonzero(gates >= tau_rank).flatten()
    if kept.numel() == 0:
        kept = gates.argmax().reshape(1)
    return kept


def plan_module(name: str, module: GatedLoRALinear, cfg: CompressionConfig) -> ModulePlan:
    """Plan one trained module from its retention and hardened gates."""
    return plan_projection(
        name,
        module.in_features,
        module.out_features,
        module.base.bias is not None,
        module.retention_value,
        int(kept_ranks(module.gates().detach(), cfg.tau_rank).numel()),
        cfg,
    )


def plan_compression(
    modules: Sequence[tuple[str, GatedLoRALinear]], cfg: CompressionConfig
) -> list[ModulePlan]:
    """Plans for all modules, in order."""
    return [plan_module(name, module, cfg) for name, module in modules]


@torch.no_grad()
def compress_module(module: GatedLoRALinear, plan: ModulePlan, cfg: CompressionConfig) -> nn.Module:
    """Build the deployed form of one module (float32 maths, cast back to its dtype)."""
    dtype, device = module.lora_A.dtype, module.lora_A.device
    kept = kept_ranks(module.gates().detach(), cfg.tau_rank)
    a_full, b_full = module.low_rank_factors()
    a = a_full.detach()[kept].float()  # (r', d_in)
    b = b_full.detach()[:, kept].float()  # (d_out, r')
    w0 = module.base.weight.detach().float()  # (d_out, d_in)
    bias = module.base.bias if plan.bias else None  # follows the dense path (DESIGN §3)
    if plan.form == "keep":
        out = nn.Linear(plan.d_in, plan.d_out, bias=plan.bias, device=device, dtype=dtype)
        out.weight.copy_(plan.alpha * w0 + b @ a)
    elif plan.form == "drop":
        out = LowRankLinear(plan.d_in, plan.d_out, plan.rank, device=device, dtype=dtype)
        out.down.weight.copy_(a)
        out.up.weight.copy_(b)
    else:
        u, s, vh = torch.linalg.svd(plan.alpha * w0, full_matrices=False)
        root = s[: plan.svd_rank].sqrt()
        down = torch.cat([root[:, None] * vh[: plan.svd_rank], a], dim=0)  # (k + r', d_in)
        up = torch.cat([u[:, : plan.svd_rank] * root[None, :], b], dim=1)  # (d_out, k + r')
        out = LowRankLinear(
            plan.d_in, plan.d_out, plan.rank, bias=plan.bias, device=device, dtype=dtype
        )
        out.down.weight.copy_(down)
        out.up.weight.copy_(up)
    if bias is not None:
        deployed_bias = out.bias if plan.form == "keep" else out.up.bias
        deployed_bias.copy_(plan.alpha * bias.float())
    return out


def compress_model(model: nn.Module, cfg: CompressionConfig) -> list[ModulePlan]:
    """Replace every :class:`GatedLoRALinear` of ``model`` in place by its deployed form."""
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]
    if not modules:
        raise InputError("model has no gated LoRA modules to compress")
    plans = plan_compression(modules, cfg)
    for (name, module), plan in zip(modules, plans):
        parent_name, _, child = name.rpartition(".")
        compressed = compress_module(module, plan, cfg)
        for value in compressed.parameters():
            if not torch.isfinite(value).all():
                raise ValueError(f"compressing {name!r} gave non-finite weights")
        setattr(model.get_submodule(parent_name), child, compressed)
    return plans


def save_compressed(
    model: PreTrainedModel,
    plans: Sequence[ModulePlan],
    out_dir: str | Path,
    lora_rank: int,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    tokenizer: Any | None = None,
) -> Path:
    """Write the compressed student as a Hugging Face model directory (config.json with
    each module's form and rank, safetensors, modeling code, model card, manifest and,
    optionally, the tokenizer), atomically: see :mod:`bl_core.export`."""
    from bl_core.export import build_manifest, save_export  # export builds on this module

    manifest = build_manifest(plans, compression_summary(plans, lora_rank), extra)
    return save_export(model, plans, out_dir, manifest, tokenizer, overwrite=overwrite)


def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{str(path)!r} is not a compressed student (no {MANIFEST_NAME})"
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(f"manifest {str(manifest_path)!r} is not valid JSON: {err}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"manifest {str(manifest_path)!r} has format {manifest.get('format')!r}")
    return manifest


def plans_from_manifest(manifest: dict[str, Any]) -> list[ModulePlan]:
    """The per-module plans recorded in a manifest."""
    names = {f.name for f in fields(ModulePlan)}
    return [
        ModulePlan(**{k: v for k, v in entry.items() if k in names})
        for entry in manifest["modules"]
    ]


def load_compressed(path: str | Path, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Rebuild a compressed student from its directory through the transformers Auto classes
    (the exported classes, no remote code); directories of the earlier format too. Never
    unpickles anything."""
    from bl_core.export import is_legacy_dir, load_export, load_legacy

    path = Path(path)
    model = load_legacy(path) if is_legacy_dir(path) else load_export(path)
    return model.to(device).eval()
