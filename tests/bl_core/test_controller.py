import math

import pytest
import torch
from torch import nn

from bl_core.controller import BudgetController, allocate_targets, scheduled_fraction
from bl_core.modules import GatedLoRALinear


def _modules(shapes):
    torch.manual_seed(0)
    return [
        (f"m{i}", GatedLoRALinear(nn.Linear(d_in, d_out, bias=False), rank=2, lora_alpha=2))
        for i, (d_in, d_out) in enumerate(shapes)
    ]


SHAPES = [(8, 32), (8, 8), (32, 8), (8, 2), (8, 8), (16, 16)]


def test_schedule_shape():
    f = lambda p: scheduled_fraction(p, 0.4, 0.1, 0.3)  # noqa: E731
    assert f(0.0) == 1.0 and f(0.0999) == 1.0
    assert f(0.1) == pytest.approx(1.0)
    assert f(0.2) == pytest.approx(0.4 + 0.6 * 0.5)
    assert f(0.3) == 0.4 and f(1.0) == 0.4
    ps = [i / 1000 for i in range(1001)]
    values = [f(p) for p in ps]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert scheduled_fraction(0.2, 0.0, 0.2, 0.2) == 0.0  # p_s == p_e: no schedule
    assert scheduled_fraction(0.19, 0.0, 0.2, 0.2) == 1.0


def test_allocation_removes_cheapest_first_with_registration_ties():
    costs = [256.0, 64.0, 256.0, 16.0, 64.0, 256.0]
    order = sorted(range(6), key=lambda i: costs[i])
    targets = allocate_targets(costs, order, budget=sum(costs) - 16 - 64 - 32, dead=[False] * 6)
    # 16 (index 3) fully, the first 64 (index 1) fully, the second 64 (index 4) half.
    assert targets == [1.0, 0.0, 1.0, 0.0, 0.5, 1.0]
    assert sum(0 < t < 1 for t in targets) <= 1


def test_controller_tracks_schedule_never_raises_and_settles_under_target():
    modules = _modules(SHAPES)
    ctrl = BudgetController(modules, total_steps=400, final_fraction=0.4, ema_beta=0.9)
    previous = ctrl.retentions
    for t in range(400):
        stats = ctrl.step()
        current = ctrl.retentions
        assert all(c <= p for c, p in zip(current, previous)), f"retention rose at step {t}"
        assert all(c == 0.0 or c >= ctrl.tau_drop for c in current)
        previous = current
        if t >= 0.3 * 400 + 100:  # the EMA has settled on the constant final target
            assert stats["dense_fraction"] <= stats["target_fraction"] + 1e-3
    assert ctrl.retained_fraction() == pytest.approx(0.4, abs=1e-3)
    assert sum(0 < a < 1 for a in ctrl.retentions) <= 1
    # costs 256, 64, 256, 16, 64, 256: the cheap ones go first, then the expensive ones
    # in registration order, so the last 256 is the one kept whole.
    assert ctrl.retentions[1] == ctrl.retentions[3] == ctrl.retentions[4] == 0.0
    assert ctrl.retentions[0] == 0.0 and 0 < ctrl.retentions[2] < 1 and ctrl.retentions[5] == 1.0


def test_without_smoothing_cost_never_exceeds_target():
    ctrl = BudgetController(_modules(SHAPES), total_steps=50, final_fraction=0.3, ema_beta=0.0)
    for _ in range(50):
        stats = ctrl.step()
        assert stats["dense_fraction"] <= stats["target_fraction"] + 1e-9


def test_final_fraction_zero_removes_everything_and_measured_rho_is_near_analytic():
    ctrl = BudgetController(_modules(SHAPES), total_steps=1000, final_fraction=0.0)
    for _ in range(1000):
        ctrl.step()
    assert ctrl.retentions == [0.0] * len(SHAPES)
    assert ctrl.num_removed() == len(SHAPES)
    analytic = 0.1 + 0.2 * 0.5  # p_s + (p_e - p_s)(1 + F)/2
    assert ctrl.mean_retained_fraction() == pytest.approx(analytic, abs=0.02)


def test_pluggable_removal_score_changes_the_order():
    modules = _modules([(8, 8), (16, 16)])
    # prefer removing the expensive module first
    ctrl = BudgetController(
        modules, 10, 0.5, 0.0, 0.0, ema_beta=0.0, removal_score=lambda name, m: -m.dense_cost
    )
    ctrl.step()
    assert ctrl.retentions[0] == 1.0 and ctrl.retentions[1] < 1.0


def test_state_dict_resume_is_exact():
    full = BudgetController(_modules(SHAPES), total_steps=100, final_fraction=0.2)
    for _ in range(100):
        full.step()
    first = BudgetController(_modules(SHAPES), total_steps=100, final_fraction=0.2)
    for _ in range(37):
        first.step()
    state = first.state_dict()
    resumed = BudgetController(_modules(SHAPES), total_steps=100, final_fraction=0.2)
    resumed.load_state_dict(state)
    for _ in range(63):
        resumed.step()
    assert resumed.retentions == full.retentions
    assert resumed.trajectory == full.trajectory
    assert not math.isnan(resumed.mean_retained_fraction())


def test_bad_arguments():
    with pytest.raises(ValueError, match="final_fraction=1.5"):
        BudgetController(_modules(SHAPES), 10, 1.5)
    with pytest.raises(ValueError, match="total_steps=0"):
        BudgetController(_modules(SHAPES), 0, 0.5)


def test_module_metrics_names_and_values(tiny_mistral):
    from bl_core.student import inject_gated_lora

    modules = inject_gated_lora(tiny_mistral, rank=4, lora_alpha=8, targets=["q_proj"])
    ctrl = BudgetController(modules, total_steps=10, final_fraction=0.5, ema_beta=0.0)
    with torch.no_grad():
        modules[0][1].gate_logits.copy_(torch.tensor([3.0, -3.0, 3.0, -3.0]))
    ctrl.step()
    ctrl.step()  # p = 0.1: the window opens
    metrics = ctrl.module_metrics(tau_rank=0.5)
    assert set(metrics) == {f"{k}/L{i}.q_proj" for k in ("alpha", "rank") for i in range(4)}
    assert metrics["rank/L0.q_proj"] == 2.0 and metrics["rank/L1.q_proj"] == 4.0
    assert metrics["alpha/L3.q_proj"] == ctrl.retentions[3]
