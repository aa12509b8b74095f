"""What a student is made of, read without torch (DESIGN §2): which teacher layers it
keeps, and — for the Llama family — the shape of every projection it adapts.

A Llama-family decoder layer (``llama``, ``mistral``, ``qwen2``) holds seven
projections, in registration order, with ``d = head_dim`` (``hidden_size /
num_attention_heads`` unless set), ``n`` query and ``n_kv`` key/value heads:

    self_attn.q_proj  hidden -> n d        self_attn.k_proj, v_proj  hidden -> n_kv d
    self_attn.o_proj  n d -> hidden        mlp.gate_proj, up_proj    hidden -> intermediate
    mlp.down_proj     intermediate -> hidden

Biases: Llama's ``attention_bias`` (q, k, v, o) and ``mlp_bias``; Qwen2's q, k and v;
none in Mistral. ``bl plan`` reads these from config.json directly; any other
architecture, or a config that leaves a shape to the library's defaults, is planned on
a meta-device model instead (:func:`bl_core.plan.meta_projections`), and a test holds the
two to the same answer for every architecture the project tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bl_core.errors import ConfigError

# config.json fields a Llama-family plan reads; all must be set for the torch-free path
LLAMA_FAMILY_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
)
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class Projection:
    """One adapted ``nn.Linear`` of the student: ``d_in -> d_out``, with or without bias."""

    name: str
    d_in: int
    d_out: int
    bias: bool


def select_layers(num_teacher_layers: int, num_student_layers: int, mode: str) -> list[int]:
    """Teacher layer indices kept by the student (DESIGN §2 table)."""
    big_l, n = num_teacher_layers, num_student_layers
    if n < 1 or n > big_l:
        raise ConfigError(
            f"student.num_layers={n}: must be between 1 and the teacher's depth {big_l}"
        )
    if mode in ("first", "truncated"):
        indices = list(range(n))
    elif mode == "last":
        indices = list(range(big_l - n, big_l))
    elif mode == "middle":
        start = (big_l - n) // 2
        indices = list(range(start, start + n))
    elif mode == "mixed":
        # First and last anchored, the rest evenly spaced. Python's round() is banker's
        # rounding; DESIGN's example (12 -> 6 gives 0,2,4,7,9,11) needs half-up.
        indices = [0] if n == 1 else [int(i * (big_l - 1) / (n - 1) + 0.5) for i in range(n)]
    else:
        raise ConfigError(
            f"student.layer_selection={mode!r}: must be one of first, truncated, middle, last, "
            "mixed"
        )
    if len(set(indices)) != n or indices != sorted(indices):
        raise ConfigError(f"layer selection {mode!r} gave colliding indices {indices}")
    return indices


def is_llama_family(data: Mapping[str, Any]) -> bool:
    """A config.json dict the torch-free path can plan: a Llama-family ``model_type`` with
    every shape field set to a positive integer (anything else goes to transformers, whose
    defaults fill absent fields and whose validators name bad ones)."""

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    head_dim = data.get("head_dim")
    return (
        data.get("model_type") in LLAMA_FAMILY
        and all(positive_int(data.get(k)) for k in LLAMA_FAMILY_FIELDS)
        and (head_dim is None or positive_int(head_dim))
    )


def llama_family_projections(
    data: Mapping[str, Any], num_layers: int, targets: Sequence[str]
) -> list[Projection]:
    """The targeted projections of a ``num_layers``-layer student of config.json ``data``,
    in the order :func:`bl_core.student.inject_gated_lora` registers them."""
    if not is_llama_family(data):
        raise ValueError(f"not a complete Llama-family config: {data.get('model_type')!r}")
    hidden, inter = data["hidden_size"], data["intermediate_size"]
    heads, kv_heads = data["num_attention_heads"], data["num_key_value_heads"]
    head_dim = data.get("head_dim") or hidden // heads
    model_type = data["model_type"]
    attn_bias = model_type == "llama" and bool(data.get("attention_bias", False))
    qkv_bias = attn_bias or model_type == "qwen2"
    mlp_bias = model_type == "llama" and bool(data.get("mlp_bias", False))
    layer = [
        ("self_attn.q_proj", hidden, heads * head_dim, qkv_bias),
        ("self_attn.k_proj", hidden, kv_heads * head_dim, qkv_bias),
        ("self_attn.v_proj", hidden, kv_heads * head_dim, qkv_bias),
        ("self_attn.o_proj", heads * head_dim, hidden, attn_bias),
        ("mlp.gate_proj", hidden, inter, mlp_bias),
        ("mlp.up_proj", hidden, inter, mlp_bias),
        ("mlp.down_proj", inter, hidden, mlp_bias),
    ]
    return [
        Projection(f"model.layers.{i}.{name}", d_in, d_out, bias)
        for i in range(num_layers)
        for name, d_in, d_out, bias in layer
        if name.rsplit(".", 1)[-1] in targets
    ]
