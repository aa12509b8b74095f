import pytest
import torch
from torch import nn

from bl_core.modules import GatedLoRALinear, LoRADropout, LowRankLinear


def _gated(bias: bool = True, use_gates: bool = True, seed: int = 0) -> GatedLoRALinear:
    torch.manual_seed(seed)
    return GatedLoRALinear(
        nn.Linear(12, 20, bias=bias), rank=4, lora_alpha=8.0, use_gates=use_gates
    )


def test_equals_base_when_B_is_zero():
    m = _gated()
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(m(x), m.base(x), rtol=0, atol=0)


def test_equals_lora_formula_for_random_factors():
    m = _gated()
    with torch.no_grad():
        m.lora_B.normal_()
        m.gate_logits.normal_()
    m.set_retention(0.3)
    x = torch.randn(3, 5, 12)
    g = torch.sigmoid(m.gate_logits)
    s = 8.0 / 4
    expected = 0.3 * (x @ m.base.weight.T + m.base.bias) + s * (x @ m.lora_A.T * g) @ m.lora_B.T
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.delta_weight(), s * m.lora_B @ torch.diag(g) @ m.lora_A)


def test_dense_path_is_skipped_at_zero_retention():
    m = _gated()
    with torch.no_grad():
        m.lora_B.normal_()
        m.base.weight.fill_(float("nan"))
        m.base.bias.fill_(float("nan"))
    calls = []
    m.base.register_forward_hook(lambda *a: calls.append(1))
    m.set_retention(0.0)
    y = m(torch.randn(2, 12))
    assert torch.isfinite(y).all(), "W0 (NaN) leaked into the output: dense matmul not skipped"
    assert calls == []


def test_only_lora_params_get_gradients_and_base_frozen():
    m = _gated()
    m(torch.randn(4, 12)).sum().backward()
    assert m.base.weight.grad is None and not m.base.weight.requires_grad
    assert m.lora_A.grad is not None and m.lora_B.grad is not None
    assert m.gate_logits.grad is not None


def test_plain_lora_has_no_gates():
    m = _gated(use_gates=False)
    assert m.gate_logits is None
    torch.testing.assert_close(m.gates(), torch.ones(4))


def test_retention_survives_state_dict_round_trip():
    m = _gated()
    m.set_retention(0.25)
    m2 = _gated(seed=1)
    m2.load_state_dict(m.state_dict())
    assert m2.retention_value == 0.25
    x = torch.randn(2, 12)
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_set_retention_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="retention"):
        _gated().set_retention(bad)


def test_low_rank_linear_matches_its_dense_weight():
    torch.manual_seed(0)
    m = LowRankLinear(6, 9, 3, bias=True)
    x = torch.randn(4, 6)
    torch.testing.assert_close(m(x), x @ m.dense_weight().T + m.up.bias)


def _assert_value_and_gradients_match_formula(
    m: GatedLoRALinear, x: torch.Tensor, y: torch.Tensor, retention: float, keep: torch.Tensor
) -> None:
    """``y = m(x)`` and its gradients equal autograd through the formula
    ``retention (W0 x + b) + 2 B diag(g) A (x * keep)`` (scale = 8 / 4)."""
    g = torch.sigmoid(m.gate_logits) if m.gate_logits is not None else torch.ones(4)
    a, b = m.lora_A.detach().clone().requires_grad_(), m.lora_B.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    expected = (
        retention * (x_ref @ m.base.weight.T + m.base.bias)
        + 2.0 * ((x_ref * keep) @ a.T * g.detach()) @ b.T
    )
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    y.backward(gy)
    expected.backward(gy)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lora_A.grad, a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lora_B.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("use_gates", "retention"), [(False, 1.0), (True, 1.0), (True, 0.0)])
def test_forward_and_gradients_match_the_formula(use_gates, retention):
    """The fused forward (addmm with retention and scale as coefficients) has the
    formula's value and gradients, for plain LoRA, gated, and the skipped dense path."""
    m = _gated(use_gates=use_gates)
    with torch.no_grad():
        m.lora_B.normal_()
    m.set_retention(retention)
    x = torch.randn(3, 5, 12, requires_grad=True)
    _assert_value_and_gradients_match_formula(m, x, m(x), retention, keep=torch.ones_like(x))


def test_lora_dropout_drops_each_element_with_probability_p_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = LoRADropout(0.05).train()
    x = torch.ones(1000, 1003)
    y = drop(x)
    dropped = (y == 0).flatten()
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.95])  # p exactly, not rounded
    sd = (0.05 * 0.95 / x.numel()) ** 0.5
    assert abs(dropped.float().mean().item() - 0.05) < 4 * sd
    # independent elements: after a dropped element the next one is dropped with rate p
    after_drop = dropped[1:][dropped[:-1]].float().mean().item()
    assert abs(after_drop - 0.05) < 4 * (0.05 * 0.95 / dropped.sum().item()) ** 0.5
    # no position is favoured: every column's rate over 1000 rows stays within 5 sd of p
    per_column = (y == 0).float().mean(0)
    assert (per_column - 0.05).abs().max().item() < 5 * (0.05 * 0.95 / 1000) ** 0.5
    assert abs(y.mean().item() - 1.0) < 5e-3  # inverted dropout keeps the expectation
    assert torch.equal(drop.eval()(x), x)  # identity in eval mode


def test_lora_dropout_positions_are_exact_even_when_the_first_draw_falls_short():
    torch.manual_seed(3)
    drop = LoRADropout(0.2)
    drop._MARGIN_SD = -20.0  # too few gaps per draw: the sampler must draw again
    n = 50_000
    pos = drop.drop_positions(n)
    assert pos.dtype == torch.int64 and torch.all(pos[1:] > pos[:-1])  # sorted, distinct
    assert pos.min().item() >= 0 and pos.max().item() < n
    assert pos.max().item() > n - 100  # the whole range is covered, not just the first draw
    assert abs(pos.numel() / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
    assert LoRADropout(0.0).drop_positions(n).numel() == 0
    assert drop.drop_positions(0).numel() == 0


def test_lora_dropout_is_seeded_and_its_gradient_is_the_mask():
    drop = LoRADropout(0.3).train()
    torch.manual_seed(7)
    first = drop(torch.ones(64, 64))
    x = torch.randn(64, 64, requires_grad=True)
    torch.manual_seed(7)
    y = drop(x)
    assert torch.equal(y == 0, first == 0)  # same seed, same mask
    y.sum().backward()
    torch.testing.assert_close(x.grad, first)  # d(x * keep / (1 - p)) / dx


@pytest.mark.parametrize(("use_gates", "retention"), [(False, 1.0), (True, 0.4), (True, 0.0)])
def test_dropout_inside_the_module_matches_the_formula(use_gates, retention):
    """In training, the fused dropout + down projection (one autograd node, scale folded
    into the LoRA scale) has the value and gradients of ``A (x * keep / (1 - p))``."""
    torch.manual_seed(0)
    m = GatedLoRALinear(
        nn.Linear(12, 20), rank=4, lora_alpha=8.0, dropout=0.25, use_gates=use_gates
    )
    with torch.no_grad():
        m.lora_B.normal_()
    m.set_retention(retention)
    m.train()
    x = torch.randn(3, 5, 12, requires_grad=True)
    torch.manual_seed(11)
    y = m(x)
    torch.manual_seed(11)
    keep = torch.ones(x.numel())
    keep[m.dropout.drop_positions(x.numel())] = 0.0
    keep = keep.view(x.shape) / 0.75
    assert 0 < (keep == 0).sum() < x.numel()
    _assert_value_and_gradients_match_formula(m, x, y, retention, keep)
    assert m.lora_A.grad.is_contiguous()  # stored in the parameter's layout


def test_module_under_cpu_autocast_runs_the_plain_path():
    torch.manual_seed(0)
    m = GatedLoRALinear(nn.Linear(12, 20), rank=4, lora_alpha=8.0, dropout=0.1).train()
    x = torch.randn(2, 3, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and m.lora_A.grad is not None


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_lora_dropout_rejects_bad_probability(bad):
    with pytest.raises(ValueError, match=f"dropout={bad}"):
        LoRADropout(bad)
