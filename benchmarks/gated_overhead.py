"""GatedLoRALinear at retention 1 vs PEFT's LoRA Linear: forward + backward (DESIGN §3).

At every distinct projection shape of the model (paper: q/o 768->768, k/v 768->192,
gate/up 768->3072, down 3072->768; r = 128, lora_alpha = 256, dropout 0.05, train mode)
three modules wrap copies of one frozen ``nn.Linear``:

- ``peft``: ``peft.tuners.lora.Linear`` (what ``get_peft_model`` inserts);
- ``gated``: :class:`~bl_core.modules.GatedLoRALinear` with gates (budgeted, alpha = 1);
- ``plain``: the same without gates (this project's kd_lora module).

One call = forward on ``(1, tokens, d_in)`` (input requiring grad, as inside a network),
backward of a fixed random output gradient, gradients cleared. All three interleaved;
the layer row weights each shape by how often it occurs in a decoder layer.
Goal: gated (and plain) at most 5% slower than PEFT. On a GPU the weights stay float32
under bf16 autocast, as in training.

    python benchmarks/gated_overhead.py
    python benchmarks/gated_overhead.py --tokens 4096 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import _common as bc
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from bl_core.modules import GatedLoRALinear
from bl_core.speed import time_interleaved

NAME = "gated_overhead"
FULL = bc.Defaults(tokens=1024, repeats=10, warmup=2)
GPU = bc.Defaults(tokens=8192, repeats=30, warmup=5)
QUICK = bc.Defaults(tokens=64, repeats=2, warmup=1)
MAX_SLOWDOWN = 1.05
SIDES = ("peft", "gated", "plain")

COLUMNS: list[bc.Column] = [
    ("shape", "shape", ""),
    ("projections", "projections", ""),
    ("peft ms", "peft_ms", ".3f"),
    ("gated ms", "gated_ms", ".3f"),
    ("plain ms", "plain_ms", ".3f"),
    ("gated/peft", "gated_over_peft", ".3f"),
    ("plain/peft", "plain_over_peft", ".3f"),
]


def layer_shapes(config: PretrainedConfig) -> dict[tuple[int, int], list[str]]:
    """Distinct ``(d_in, d_out)`` of a decoder layer's 7 projections -> projection names."""
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    projections = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, shape in projections.items():
        shapes.setdefault(shape, []).append(name)
    return shapes


def build_modules(
    d_in: int, d_out: int, rank: int, lora_alpha: float, dropout: float, device: torch.device
) -> dict[str, nn.Module]:
    """The three sides around copies of one frozen base layer (float32 weights)."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLoraLinear

    base = nn.Linear(d_in, d_out, bias=False, device=device).requires_grad_(False)
    alpha = int(lora_alpha) if float(lora_alpha).is_integer() else lora_alpha
    peft_cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout)
    peft = PeftLoraLinear(_frozen_copy(base), "default", peft_cfg, r=rank, lora_alpha=alpha)
    modules = {
        "peft": peft,
        "gated": GatedLoRALinear(_frozen_copy(base), rank, lora_alpha, dropout, use_gates=True),
        "plain": GatedLoRALinear(_frozen_copy(base), rank, lora_alpha, dropout, use_gates=False),
    }
    for m in modules.values():
        m.to(device).train()
    trainable = {
        k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in modules.items()
    }
    assert trainable["peft"] == trainable["plain"] == rank * (d_in + d_out), trainable
    return modules


def _frozen_copy(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(
        linear.in_features, linear.out_features, bias=False, device=linear.weight.device
    )
    out.weight.data.copy_(linear.weight.data)
    return out.requires_grad_(False)


def forward_backward(
    module: nn.Module, x: Tensor, grad_out: Tensor, autocast: bool
) -> Callable[[], None]:
    """One training-style call: forward, backward, gradients cleared."""
    params = [p for p in module.parameters() if p.requires_grad]
    device_type = x.device.type

    def run() -> None:
        ctx = (
            torch.autocast(device_type, dtype=torch.bfloat16)
            if autocast
            else contextlib.nullcontext()
        )
        with ctx:
            y = module(x)  # (1, T, d_out)
        y.backward(grad_out)
        x.grad = None
        for p in params:
            p.grad = None

    return bc.in_grad_mode(run)


def measure_shape(
    args: argparse.Namespace, d_in: int, d_out: int, names: list[str]
) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    modules = build_modules(d_in, d_out, args.rank, args.lora_alpha, args.dropout, args.device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, args.tokens, d_in, generator=gen).to(args.device).requires_grad_(True)
    out_dtype = args.dtype if args.autocast else torch.float32
    grad_out = torch.randn(1, args.tokens, d_out, generator=gen).to(args.device, out_dtype)
    fns = [forward_backward(modules[s], x, grad_out, args.autocast) for s in SIDES]
    timings = time_interleaved(fns, args.repeats, args.warmup, args.device)
    medians = {s: t.median_s for s, t in zip(SIDES, timings)}
    return {
        "shape": f"{d_in}->{d_out}",
        "d_in": d_in,
        "d_out": d_out,
        "projections": "/".join(n.removesuffix("_proj") for n in names),
        "count_per_layer": len(names),
        **{f"{s}_ms": 1e3 * medians[s] for s in SIDES},
        **{f"{s}_samples_s": list(t.samples_s) for s, t in zip(SIDES, timings)},
        "gated_over_peft": medians["gated"] / medians["peft"],
        "plain_over_peft": medians["plain"] / medians["peft"],
    }


def layer_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A decoder layer's 7 projections: per-shape medians weighted by their count."""
    total = {s: sum(r[f"{s}_ms"] * r["count_per_layer"] for r in rows) for s in SIDES}
    return {
        "shape": "layer",
        "projections": f"{sum(r['count_per_layer'] for r in rows)} projections",
        **{f"{s}_ms": total[s] for s in SIDES},
        "gated_over_peft": total["gated"] / total["peft"],
        "plain_over_peft": total["plain"] / total["peft"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = bc.build_parser(__doc__, FULL, QUICK, GPU, "tokens per module input")
    bc.add_model_args(parser, budgets=False, student=False)
    parser.add_argument("--dropout", type=float, help="LoRA dropout (default: config, 0.05)")
    args = bc.resolve(parser, argv)
    cfg = bc.method_config(args)
    args.rank, args.lora_alpha = cfg.lora.rank, cfg.lora.lora_alpha
    args.dropout = cfg.lora.dropout if args.dropout is None else args.dropout
    args.autocast = args.dtype == torch.bfloat16  # float32 weights, bf16 matmuls
    bc.setup(args)
    env = bc.environment(args)
    print(bc.format_header("gated LoRA overhead: GatedLoRALinear vs PEFT LoRA Linear", env))
    shapes = layer_shapes(bc.teacher_config(args))
    rows = [measure_shape(args, d_in, d_out, names) for (d_in, d_out), names in shapes.items()]
    layer = layer_row(rows)
    print()
    print(bc.format_table([*rows, layer], COLUMNS))
    goals = [
        bc.goal(f"{r['shape']} gated/peft time", r["gated_over_peft"], MAX_SLOWDOWN, False)
        for r in [*rows, layer]
    ]
    goals.append(bc.goal("layer plain/peft time", layer["plain_over_peft"], MAX_SLOWDOWN, False))
    settings = bc.common_settings(args) | {
        "model_config": args.model_config or ("quick" if args.quick else "mistral-0.13b"),
        "rank": args.rank,
        "lora_alpha": args.lora_alpha,
        "dropout": args.dropout,
        "autocast_bf16": args.autocast,
    }
    bc.finish(NAME, args, env, settings, [*rows, layer], goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
