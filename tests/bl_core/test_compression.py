import json

import pytest
import torch
from conftest import make_mistral

from bl_core.checkpoint import load_causal_lm
from bl_core.compression import (
    MANIFEST_NAME,
    compress_model,
    kept_ranks,
    load_compressed,
    save_compressed,
)
from bl_core.config import CompressionConfig
from bl_core.errors import InputError
from bl_core.forms import choose_form
from bl_core.modules import GatedLoRALinear, LowRankLinear
from bl_core.student import inject_gated_lora

CFG = CompressionConfig()


# Gates 0.95, 0, 0.73, 0: hardening at tau_rank=0.5 keeps ranks 0 and 2 and loses nothing.
HARD_GATES = [3.0, -1e4, 1.0, -1e4]


def _trained_like(retention: float, seed: int = 0, gate_logits=HARD_GATES):
    """A tiny gated model with random (non-zero) LoRA factors and given gate logits."""
    model = make_mistral(seed=seed)
    modules = inject_gated_lora(model, rank=4, lora_alpha=8)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in modules:
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)
            m.gate_logits.copy_(torch.tensor(gate_logits))
            m.set_retention(retention)
    return model, modules


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


X = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("retention", "form"), [(1.0, "keep"), (0.7, "keep"), (0.0, "drop")])
def test_keep_and_drop_forms_match_the_gated_model(retention, form):
    model, _ = _trained_like(retention)
    gated = _logits(model, X)
    plans = compress_model(model, CFG)
    assert {p.form for p in plans} == {form}
    assert all(p.lora_rank == 2 for p in plans)
    assert not any(isinstance(m, GatedLoRALinear) for m in model.modules())
    torch.testing.assert_close(_logits(model, X), gated, rtol=1e-4, atol=1e-4)


def test_hardening_removes_the_ranks_under_tau_rank():
    # gates 0.95, 0.05, 0.73, 0.38: ranks 1 and 3 are cut, and their contribution with them
    model, modules = _trained_like(0.0, gate_logits=[3.0, -3.0, 1.0, -0.5])
    q = modules[0][1]
    x = torch.randn(5, 32)
    with torch.no_grad():
        a, b = q.low_rank_factors()
        expected = x @ (b[:, [0, 2]] @ a[[0, 2]]).T
    plans = compress_model(model, CFG)
    assert plans[0].lora_rank == 2
    with torch.no_grad():
        torch.testing.assert_close(model.model.layers[0].self_attn.q_proj(x), expected)


def test_svd_form_error_is_the_truncated_svd_error():
    cfg = CompressionConfig(svd_max_rank=8)
    model, modules = _trained_like(0.3)
    q = modules[0][1]
    w = 0.3 * q.base.weight.detach()
    gated_out = q(torch.eye(32))  # rows: q applied to each basis vector
    plans = compress_model(model, cfg)
    assert {p.form for p in plans} == {"svd"}
    k = plans[0].svd_rank
    assert k == min(8, 5)  # ceil(8 * 0.3 / 0.5) = 5
    compressed = model.model.layers[0].self_attn.q_proj
    assert isinstance(compressed, LowRankLinear) and compressed.rank == k + 2
    with torch.no_grad():
        err = (compressed(torch.eye(32)) - gated_out).T  # (d_out, d_in) residual error
        s = torch.linalg.svdvals(w)
    # Eckart-Young: the Frobenius error of the best rank-k approximation
    expected = s[k:].square().sum().sqrt().item()
    assert torch.linalg.norm(err).item() == pytest.approx(expected, rel=1e-3)
    # and the whole model stays close to the gated one
    assert plans[0].rank == k + 2


def test_choose_form_thresholds():
    assert choose_form(0.04, CFG) == ("drop", 0)
    assert choose_form(0.05, CFG) == ("svd", 7)  # ceil(64 * 0.05 / 0.5) = 7 (float 6.4)
    assert choose_form(0.49, CFG)[0] == "svd"
    assert choose_form(0.5, CFG) == ("keep", 0)


def test_kept_ranks_keeps_at_least_the_largest_gate():
    assert kept_ranks(torch.tensor([0.1, 0.3, 0.2]), 0.5).tolist() == [1]
    assert kept_ranks(torch.tensor([0.9, 0.3, 0.6]), 0.5).tolist() == [0, 2]


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model, modules = _trained_like(0.0)
    for i, (_, m) in enumerate(modules):
        m.set_retention([0.0, 0.3, 0.8][i % 3])
    plans = compress_model(model, CFG)
    assert {p.form for p in plans} == {"keep", "svd", "drop"}
    out = tmp_path / "student"
    save_compressed(model, plans, out, lora_rank=4)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (
        manifest["summary"]["dense_kept"]
        + manifest["summary"]["dense_svd"]
        + manifest["summary"]["dense_dropped"]
        == 28
    )
    assert {"name", "form", "rank", "d_in", "d_out"} <= set(manifest["modules"][0])
    reloaded = load_causal_lm(out)
    torch.testing.assert_close(_logits(reloaded, X), _logits(model, X), rtol=0, atol=0)
    assert not any(isinstance(m, GatedLoRALinear) for m in reloaded.modules())


def test_save_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    model, _ = _trained_like(0.0)
    plans = compress_model(model, CFG)
    out = tmp_path / "student"
    save_compressed(model, plans, out, lora_rank=4)
    with pytest.raises(FileExistsError):
        save_compressed(model, plans, out, lora_rank=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_loading_bad_dirs_gives_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(InputError, match="neither"):
        load_causal_lm(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_compressed(tmp_path)
