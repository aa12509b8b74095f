"""Speed measurement: structure and MAC bookkeeping only. No timing assertions — the
machine is shared and noisy."""

import json
import math

import pytest
import torch
from conftest import make_mistral, make_mistral_config
from torch import nn

from bl_core.compression import compress_model
from bl_core.config import CompressionConfig
from bl_core.costs import compression_summary
from bl_core.modules import GatedLoRALinear, LowRankLinear
from bl_core.speed import (
    dense_twin,
    end_to_end_mac_limit,
    greedy_generate,
    measure_module_speedup,
    measure_speed,
    time_interleaved,
)
from bl_core.student import inject_gated_lora

REQUIRED_KEYS = {
    "modules_speedup_measured",
    "modules_speedup_mac",
    "forward_speedup_measured",
    "generate_speedup_measured",
    "end_to_end_mac_limit",
    "forward_ms_dense",
    "forward_ms_compressed",
    "generate_tokens_per_s_dense",
    "generate_tokens_per_s_compressed",
    "device",
    "torch_version",
    "num_threads",
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on 2 threads spin ~8 ms per call in OpenMP barriers when another
    process holds the cores; one thread keeps these tests fast on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compressed(retentions=(0.0, 0.3, 0.8)):
    """A tiny trained-like student compressed to a mix of drop / svd / keep forms."""
    model = make_mistral(seed=0)
    modules = inject_gated_lora(model, rank=4, lora_alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, (_, m) in enumerate(modules):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)
            m.set_retention(retentions[i % len(retentions)])
    plans = compress_model(model, CompressionConfig(svd_max_rank=8))
    return model.eval(), plans


def test_time_interleaved_alternates_sides_and_takes_medians_of_repeats():
    calls = []
    ticks = iter(range(1000))
    timings = time_interleaved(
        [lambda: calls.append("A"), lambda: calls.append("B")],
        repeats=3,
        warmup=2,
        clock=lambda: next(ticks) ** 2,  # growing gaps: each sample differs
    )
    assert calls == ["A", "B"] * 5
    assert [len(t.samples_s) for t in timings] == [3, 3]
    for t in timings:
        assert t.median_s == sorted(t.samples_s)[1]
    # rounds 2..4 of side A start at tick 8, 12, 16: samples (k+1)^2 - k^2 = 2k + 1
    assert timings[0].samples_s == (17.0, 25.0, 33.0)


def test_time_interleaved_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats=0"):
        time_interleaved([lambda: None], repeats=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        time_interleaved([lambda: None], warmup=-1)


def test_module_mac_ratio_is_the_hand_computed_one():
    dense = [GatedLoRALinear(nn.Linear(32, 64), rank=4, lora_alpha=8), nn.Linear(64, 32)]
    compressed = [LowRankLinear(32, 64, rank=4), nn.Linear(64, 32)]
    r = measure_module_speedup(dense, compressed, num_tokens=8, repeats=2, warmup=0)
    # dense 32*64 + 64*32 = 4096; compressed 4*(32+64) + 64*32 = 2432
    assert r["dense_macs_per_token"] == 4096
    assert r["compressed_macs_per_token"] == 2432
    assert r["speedup_mac"] == pytest.approx(4096 / 2432)
    assert r["dense_s"] > 0 and r["compressed_s"] > 0


def test_module_mac_ratio_matches_the_compression_summary():
    model, plans = _compressed()
    twin = dense_twin(model)
    r = measure_module_speedup(
        [twin.get_submodule(p.name) for p in plans],
        [model.get_submodule(p.name) for p in plans],
        num_tokens=8,
        repeats=1,
        warmup=0,
    )
    assert {p.form for p in plans} == {"drop", "svd", "keep"}
    summary = compression_summary(plans, lora_rank=4)
    assert r["speedup_mac"] == pytest.approx(summary["infer_speedup_mac"])


def test_module_measurement_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="same non-zero number"):
        measure_module_speedup([nn.Linear(4, 4)], [], repeats=1)
    with pytest.raises(ValueError, match="module 0: dense 4->8 vs compressed 4->4"):
        measure_module_speedup([nn.Linear(4, 8)], [nn.Linear(4, 4)], repeats=1)


def test_dense_twin_is_the_same_architecture_with_plain_linears():
    model, plans = _compressed()
    twin = dense_twin(model)
    assert twin.config.to_dict() == model.config.to_dict()
    assert type(twin) is type(model)
    for p in plans:
        module = twin.get_submodule(p.name)
        assert type(module) is nn.Linear
        assert (module.in_features, module.out_features) == (p.d_in, p.d_out)
    assert not any(isinstance(m, LowRankLinear) for m in twin.modules())
    assert sum(p.numel() for p in twin.parameters()) == sum(
        p.numel() for p in make_mistral().parameters()
    )
    assert not twin.training
    assert next(twin.parameters()).dtype == next(model.parameters()).dtype


def test_generation_never_stops_early_on_either_side():
    model, _ = _compressed()
    twin = dense_twin(model)
    prompt = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    for m in (model, twin):
        with torch.inference_mode():
            first = greedy_generate(m, prompt, 1)[0, -1].item()
        # Make the first greedy token the EOS: plain greedy decoding would stop right there.
        m.generation_config.eos_token_id = first
        with torch.inference_mode():
            out = greedy_generate(m, prompt, 6)
        assert out.shape == (2, 5 + 6)
        assert torch.equal(out[:, :5], prompt)


def test_end_to_end_mac_limit_by_hand():
    config = make_mistral_config()  # 4 layers, d=32, ffn=64, 4/2 heads (head_dim 8), V=300
    model, plans = _compressed()
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64  # q,o + k,v + gate,up,down
    attention = 32 * (10 + 1)  # num_heads * head_dim * (seq_len + 1), causal
    dense = 4 * (per_layer + attention) + 32 * 300
    saved = sum(p.dense_macs - p.compressed_macs for p in plans)
    assert end_to_end_mac_limit(config, plans, seq_len=10) == pytest.approx(dense / (dense - saved))
    full = 4 * (per_layer + 2 * 10 * 32) + 32 * 300
    assert end_to_end_mac_limit(config, plans, seq_len=10, causal=False) == pytest.approx(
        full / (full - saved)
    )
    # untouched attention and LM head only dilute the adapted modules' ratio
    modules_ratio = compression_summary(plans, lora_rank=4)["infer_speedup_mac"]
    assert 1.0 < end_to_end_mac_limit(config, plans, seq_len=10) < modules_ratio


def test_measure_speed_reports_every_figure_finite_and_positive():
    model, plans = _compressed()
    twin = dense_twin(model)
    r = measure_speed(
        twin, model, plans, num_tokens=16, seq_len=12, gen_tokens=3, prompt_len=4, repeats=2
    )
    assert REQUIRED_KEYS <= set(r)
    json.dumps(r, allow_nan=False)
    for key, value in r.items():
        if isinstance(value, (int, float)) and key != "warmup":
            assert math.isfinite(value) and value > 0, (key, value)
    assert r["device"] == "cpu"
    assert r["torch_version"] == torch.__version__
    assert r["modules_speedup_mac"] == pytest.approx(
        compression_summary(plans, lora_rank=4)["infer_speedup_mac"]
    )
