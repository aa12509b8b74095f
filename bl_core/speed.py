"""Measured inference speed of a compressed student vs its dense twin (DESIGN §5).

Three figures, each next to the MAC figure it should approach:

- **modules**: the adapted projections alone, each run on ``x`` of shape
  ``(1, num_tokens, d_in)``. Dense side ``W0 x`` (``nn.Linear``); compressed side the
  deployed forms (``nn.Linear`` for keep, :class:`~bl_core.modules.LowRankLinear` for
  drop/svd). Compared with the paper's MAC ratio

      modules_speedup_mac = Σ_m d_in d_out / Σ_m compressed_MACs_m
      compressed_MACs_m   = d_in d_out (keep)  or  rank (d_in + d_out) (drop, svd)

- **forward**: one forward of the whole model on ``(batch, seq_len)`` ids.
- **generate**: greedy decoding with a KV cache, exactly ``gen_tokens`` new tokens
  from a ``prompt_len`` prompt (tokens/s includes the prompt's prefill).

Both forward and generate are bounded by :func:`end_to_end_mac_limit`, which adds
what compression does not touch (per token, per layer, causal attention, LM head)::

    limit = (P_dense + A + H) / (P_dense - Σ_m d_in d_out + Σ_m compressed_MACs_m + A + H)
    A = num_layers * num_heads * head_dim * (seq_len + 1)   (causal; 2 * seq_len * ... if full)
    H = hidden_size * vocab_size                            (LM head)

where ``P_dense`` is the MACs of all q/k/v/o/gate/up/down projections. Norms,
activations, RoPE and the embedding lookup are elementwise or free and not counted.

Timing: both sides of every ratio run in the same process, interleaved
``A, B, A, B, ...`` after warm-up rounds, so drift of a shared machine hits both
alike; the figure is the median of the repeats.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from bl_core.modules import GatedLoRALinear, LowRankLinear

if TYPE_CHECKING:
    from bl_core.forms import ModulePlan


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one callable, in seconds."""

    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Timing]:
    """Time each of ``fns`` ``repeats`` times, interleaved round by round, after
    ``warmup`` untimed rounds (allocator, thread pool and caches settle first)."""
    _check_positive(repeats=repeats)
    if warmup < 0:
        raise ValueError(f"warmup={warmup}: must be >= 0")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    samples: list[list[float]] = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside one side's sample is noise
    try:
        with torch.inference_mode():
            for round_index in range(warmup + repeats):
                for fn, side in zip(fns, samples):
                    sync()  # kernels queued by the other side must not be billed here
                    start = clock()
                    fn()
                    sync()
                    elapsed = clock() - start
                    if round_index >= warmup:
                        side.append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [Timing(tuple(s)) for s in samples]


def module_macs(module: nn.Module) -> int:
    """MACs per token of a deployed projection (DESIGN §5 cost of each form)."""
    if isinstance(module, GatedLoRALinear):
        module = module.base  # the dense reference is W0 x
    if isinstance(module, LowRankLinear):
        return module.rank * (module.in_features + module.out_features)
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    raise TypeError(f"{type(module).__name__}: expected nn.Linear or LowRankLinear")


def _dense_reference(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, GatedLoRALinear) else module


def _module_inputs(
    dense: Sequence[nn.Module], compressed: Sequence[nn.Module], num_tokens: int, seed: int
) -> list[Tensor]:
    """One random ``(1, num_tokens, d_in)`` input per module pair, checking shapes match."""
    gen = torch.Generator().manual_seed(seed)
    shared: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
    xs = []
    for i, (d, c) in enumerate(zip(dense, compressed)):
        if (d.in_features, d.out_features) != (c.in_features, c.out_features):
            raise ValueError(
                f"module {i}: dense {d.in_features}->{d.out_features} vs compressed "
                f"{c.in_features}->{c.out_features}"
            )
        w = d.weight
        key = (d.in_features, w.dtype, w.device)
        if key not in shared:  # one input per width keeps memory flat
            x = torch.randn(1, num_tokens, d.in_features, generator=gen)  # (1, T, d_in)
            shared[key] = x.to(device=w.device, dtype=w.dtype)
        xs.append(shared[key])
    return xs


def measure_module_speedup(
    dense_modules: Sequence[nn.Module],
    compressed_modules: Sequence[nn.Module],
    num_tokens: int = 1024,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Total time of all dense vs all compressed projections on ``(1, num_tokens, d_in)``.

    ``dense_modules[i]`` and ``compressed_modules[i]`` must have the same
    ``(in_features, out_features)``; a :class:`GatedLoRALinear` counts as its ``base``.
    """
    _check_positive(num_tokens=num_tokens)
    dense = [_dense_reference(m) for m in dense_modules]
    if len(dense) != len(compressed_modules) or not dense:
        raise ValueError(
            f"got {len(dense)} dense and {len(compressed_modules)} compressed modules: "
            "need the same non-zero number"
        )
    xs = _module_inputs(dense, compressed_modules, num_tokens, seed)

    def run(modules: Sequence[nn.Module]) -> Callable[[], None]:
        def run_all() -> None:
            for module, x in zip(modules, xs):
                module(x)

        return run_all

    device = dense[0].weight.device
    t_dense, t_comp = time_interleaved(
        [run(dense), run(compressed_modules)], repeats, warmup, device
    )
    dense_macs = sum(module_macs(m) for m in dense)
    comp_macs = sum(module_macs(m) for m in compressed_modules)
    return {
        "dense_s": t_dense.median_s,
        "compressed_s": t_comp.median_s,
        "speedup_measured": t_dense.median_s / t_comp.median_s,
        "speedup_mac": dense_macs / comp_macs,
        "dense_macs_per_token": dense_macs,
        "compressed_macs_per_token": comp_macs,
        "num_modules": len(dense),
        "num_tokens": num_tokens,
    }


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def greedy_generate(model: nn.Module, prompt_ids: Tensor, gen_tokens: int) -> Tensor:
    """Greedy decoding with KV cache that always adds exactly ``gen_tokens`` tokens.

    ``min_new_tokens`` masks EOS until the end, so a model that happens to emit EOS
    early does the same amount of work as one that does not.
    """
    eos = model.generation_config.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    pad = model.generation_config.pad_token_id
    if pad is None:  # any valid id: with one unpadded prompt it is never read
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    config = GenerationConfig(
        do_sample=False,
        use_cache=True,
        max_new_tokens=gen_tokens,
        min_new_tokens=gen_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    attention_mask = torch.ones_like(prompt_ids)
    out = model.generate(
        input_ids=prompt_ids, attention_mask=attention_mask, generation_config=config
    )
    assert out.shape[1] == prompt_ids.shape[1] + gen_tokens, out.shape
    return out


def measure_model_speedup(
    dense_model: nn.Module,
    compressed_model: nn.Module,
    seq_len: int = 1024,
    gen_tokens: int = 64,
    prompt_len: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """End-to-end forward latency at ``seq_len`` and greedy generation latency, both
    models on the same random ids; ratios are dense / compressed."""
    _check_positive(
        seq_len=seq_len, gen_tokens=gen_tokens, prompt_len=prompt_len, batch_size=batch_size
    )
    device = _model_device(compressed_model)
    vocab = min(dense_model.config.vocab_size, compressed_model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)  # (B, T)
    prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=gen).to(device)

    def forward(model: nn.Module) -> Callable[[], object]:
        return lambda: model(input_ids=ids, use_cache=False)  # no cache: nothing to keep

    def generate(model: nn.Module) -> Callable[[], object]:
        return lambda: greedy_generate(model, prompt, gen_tokens)

    fwd = time_interleaved(
        [forward(dense_model), forward(compressed_model)], repeats, warmup, device
    )
    gen_t = time_interleaved(
        [generate(dense_model), generate(compressed_model)], repeats, warmup, device
    )
    new_tokens = batch_size * gen_tokens
    return {
        "forward_ms_dense": 1e3 * fwd[0].median_s,
        "forward_ms_compressed": 1e3 * fwd[1].median_s,
        "forward_speedup_measured": fwd[0].median_s / fwd[1].median_s,
        "generate_ms_dense": 1e3 * gen_t[0].median_s,
        "generate_ms_compressed": 1e3 * gen_t[1].median_s,
        "generate_tokens_per_s_dense": new_tokens / gen_t[0].median_s,
        "generate_tokens_per_s_compressed": new_tokens / gen_t[1].median_s,
        "generate_speedup_measured": gen_t[0].median_s / gen_t[1].median_s,
    }


def end_to_end_mac_limit(
    model_config: PretrainedConfig,
    plans: Sequence[ModulePlan],
    seq_len: int,
    causal: bool = True,
) -> float:
    """Whole-model MAC ratio dense / compressed per token at ``seq_len`` (module doc).

    Causal attention: the query at position ``t`` scores ``t + 1`` keys (QKᵀ) and mixes
    as many values (AV), ``2 * head_dim`` MACs per key and head; averaged over
    ``t = 0..seq_len-1`` that is ``num_heads * head_dim * (seq_len + 1)`` per layer and
    token. ``causal=False`` counts the full score matrix, ``2 * seq_len * num_heads *
    head_dim``, which is what an attention kernel that computes masked scores does.
    """
    _check_positive(seq_len=seq_len)
    c = model_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q_width, kv_width = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = (
        2 * c.hidden_size * q_width  # q_proj, o_proj
        + 2 * c.hidden_size * kv_width  # k_proj, v_proj
        + 3 * c.hidden_size * c.intermediate_size  # gate_proj, up_proj, down_proj
    )
    keys = (seq_len + 1) / 2 if causal else seq_len
    attention = 2 * q_width * keys
    untouched = c.num_hidden_layers * attention + c.hidden_size * c.vocab_size
    dense = c.num_hidden_layers * per_layer + untouched
    saved = sum(p.dense_macs - p.compressed_macs for p in plans)
    return dense / (dense - saved)


def dense_twin(compressed_model: nn.Module) -> nn.Module:
    """The same architecture with plain ``nn.Linear`` projections and random weights
    (speed does not depend on values), in the compressed model's dtype and device."""
    param = next(compressed_model.parameters())
    config = compressed_model.config
    attn = getattr(config, "_attn_implementation", None)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.to(device=param.device, dtype=param.dtype).eval()


def measure_speed(
    dense_model: nn.Module,
    compressed_model: nn.Module,
    plans: Sequence[ModulePlan],
    num_tokens: int = 1024,
    seq_len: int = 1024,
    gen_tokens: int = 64,
    prompt_len: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """All speed figures of DESIGN §5 as a JSON-able dict (modules, forward, generate)."""
    names = [p.name for p in plans]
    modules = measure_module_speedup(
        [dense_model.get_submodule(n) for n in names],
        [compressed_model.get_submodule(n) for n in names],
        num_tokens=num_tokens,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    model = measure_model_speedup(
        dense_model,
        compressed_model,
        seq_len=seq_len,
        gen_tokens=gen_tokens,
        prompt_len=prompt_len,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    limit = end_to_end_mac_limit(compressed_model.config, plans, seq_len)
    # The machine may be shared: the load next to the figures says how far to trust them.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "modules_speedup_measured": modules["speedup_measured"],
        "modules_speedup_mac": modules["speedup_mac"],
        "modules_s_dense": modules["dense_s"],
        "modules_s_compressed": modules["compressed_s"],
        **model,
        "end_to_end_mac_limit": limit,
        "num_tokens": num_tokens,
        "seq_len": seq_len,
        "gen_tokens": gen_tokens,
        "prompt_len": prompt_len,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(_model_device(compressed_model)),
        "dtype": str(next(compressed_model.parameters()).dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "load_average_1m": load,
    }
