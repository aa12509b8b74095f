"""``bl plan``: see what a budget does to a model before spending GPU hours."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bl_core.architecture import is_llama_family
from bl_core.cli import add_config_arguments, load_config_arguments
from bl_core.errors import BLError, ConfigError, InputError
from bl_core.integrity import check_json_file

# flag -> dotted config field
_FLAG_FIELDS = {
    "student_layers": "student.num_layers",
    "layer_selection": "student.layer_selection",
    "rank": "lora.rank",
    "lora_alpha": "lora.lora_alpha",
    "targets": "lora.targets",
    "final_fraction": "budget.final_fraction",
    "schedule_start": "budget.schedule_start",
    "schedule_end": "budget.schedule_end",
    "ema_beta": "budget.ema_beta",
    "tau_drop": "compression.tau_drop",
    "tau_svd": "compression.tau_svd",
    "tau_rank": "compression.tau_rank",
    "svd_max_rank": "compression.svd_max_rank",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="controller + compression plan for a model config (no weights, no training)",
        description="Instantiate the student on the meta device, run the budget controller "
        "over a full schedule with gates open, plan the compression and print the figures.",
    )
    p.add_argument(
        "--model-config", required=True, help="teacher config.json, model dir or Hub id org/name"
    )
    p.add_argument("--revision", help="Hub revision when --model-config is an id")
    add_config_arguments(p, default=None)
    p.add_argument("--student-layers", type=int)
    p.add_argument("--layer-selection", choices=["first", "truncated", "middle", "last", "mixed"])
    p.add_argument("--rank", type=int)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--final-fraction", type=float)
    p.add_argument("--schedule-start", type=float)
    p.add_argument("--schedule-end", type=float)
    p.add_argument("--ema-beta", type=float)
    p.add_argument("--tau-drop", type=float)
    p.add_argument("--tau-svd", type=float)
    p.add_argument("--tau-rank", type=float)
    p.add_argument("--svd-max-rank", type=int)
    p.add_argument("--targets", help="comma-separated (default: all seven projections)")
    p.add_argument("--steps", type=int, default=1000, help="schedule length to simulate")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE.json", help="also write the plan here as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for flag, field in _FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = [t.strip() for t in value.split(",")] if flag == "targets" else value
    cfg, _ = load_config_arguments(args, overrides)
    from bl_core.hub import resolve_model_config

    source = resolve_model_config(args.model_config, args.revision)
    model_config = check_plan_model(source, cfg.student.num_layers)  # one line if impossible
    from bl_core.io import atomic_write_json
    from bl_core.plan import plan_budget  # torch only for a model outside the Llama family

    result = plan_budget(model_config, cfg, total_steps=args.steps)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def format_plan(result: dict[str, Any]) -> str:
    lines = [f"{'module':<40} {'d_in':>6} {'d_out':>6} {'alpha':>6} {'form':>5} {'rank':>5}"]
    for m in result["modules"]:
        lines.append(
            f"{m['name']:<40} {m['d_in']:>6} {m['d_out']:>6} {m['alpha']:>6.3f} "
            f"{m['form']:>5} {m['rank']:>5}"
        )
    r = result
    lines += [
        "",
        f"student layers (teacher indices): {r['student_layer_indices']}",
        f"final dense fraction: requested {r['final_fraction']:.3f}, "
        f"realised {r['realised_fraction']:.3f} (of adapted-module dense MACs)",
        f"dense kept / svd / dropped:       {r['dense_kept']} / {r['dense_svd']} / "
        f"{r['dense_dropped']}   avg hardened rank {r['avg_rank']:.1f}",
        f"inference speedup (MAC):          {r['infer_speedup_mac']:.2f}x",
        f"param reduction vs LoRA:          {100 * r['param_reduction_vs_lora']:.1f}%",
        f"train compute vs KD Full:         budgeted {r['train_compute_proxy']:.2f} "
        f"(measured schedule {r['train_compute_proxy_measured']:.2f}), "
        f"kd_lora {r['kd_lora_train_compute_proxy']:.2f}",
    ]
    return "\n".join(lines)


# -- the model bl plan is given: checked before any work ---------------------------------
_SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


def check_plan_model(path: str | Path, student_layers: int) -> Any:
    """``bl plan``'s model: a config.json (file or model dir) of an architecture transformers
    knows, with shapes a student can be built from. Returns the config.json dict when it is
    a complete Llama-family config (planned without torch, :mod:`bl_core.architecture`),
    else the loaded transformers config; prints which shape fields came from the library's
    defaults, since a config that names only its ``model_type`` otherwise plans a full-size
    model silently."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    field = f"--model-config={str(path)!r}"
    if not file.is_file():
        raise InputError(f"{field}: no config.json")
    data = check_json_file(file, "model config")
    model_type = data.get("model_type")
    if model_type is None:
        raise InputError(f"{field}: has no 'model_type'")
    _check_shapes(_Fields(data), field, student_layers)  # before transformers' own checks
    if is_llama_family(data):
        return data
    return _load_plan_config(path, file, data, field, student_layers)


def _load_plan_config(
    path: Path, file: Path, data: dict[str, Any], field: str, student_layers: int
) -> Any:
    """The transformers config of a model ``bl plan`` instantiates on the meta device."""
    from transformers import CONFIG_MAPPING

    from bl_core.student import load_model_config

    model_type = data["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise InputError(
            f"{field}: model_type={model_type!r} is not an architecture this transformers "
            "version knows (e.g. llama, mistral, qwen2)"
        )
    try:
        config = load_model_config(path)
    except BLError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers' validators raise several types
        cause = err.__cause__ or err
        raise InputError(f"{field}: {str(cause).splitlines()[0]}") from None
    defaulted = [f"{k}={getattr(config, k, None)}" for k in _SHAPE_FIELDS if k not in data]
    if defaulted:
        print(
            f"bl plan: note: {file} does not set {len(defaulted)} shape field(s); using "
            f"transformers' {model_type} defaults: {', '.join(defaulted)}",
            file=sys.stderr,
        )
    _check_shapes(config, field, student_layers)
    return config


class _Fields:
    """A config.json dict read like a config object (absent fields are ``None``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)

    def __getattr__(self, name: str) -> None:
        return None


def _check_shapes(config: Any, field: str, student_layers: int) -> None:
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", 0)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    layers = getattr(config, "num_hidden_layers", None)
    if hidden is None or not heads:
        return  # a library default fills it (checked again on the loaded config)
    if not isinstance(hidden, int) or hidden <= 0:
        raise InputError(f"{field}: hidden_size={hidden}, num_attention_heads={heads}")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if getattr(config, "head_dim", None) is None and hidden % heads:
        raise InputError(
            f"{field}: hidden_size={hidden} is not divisible by num_attention_heads={heads}"
        )
    if heads % kv_heads:
        raise InputError(
            f"{field}: num_attention_heads={heads} is not divisible by num_key_value_heads="
            f"{kv_heads}"
        )
    if head_dim % 2:
        raise InputError(f"{field}: head dimension {head_dim} is odd (rotary embeddings need even)")
    if isinstance(layers, int) and student_layers > layers:
        raise ConfigError(
            f"student.num_layers={student_layers}: more than the model's {layers} layers"
        )
