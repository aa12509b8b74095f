import pytest

from bl_core.costs import analytic_mean_retention, dense_cost, lora_cost, train_compute_proxy

# One layer of the paper's 0.13B model: q, k, v, o, gate, up, down.
LAYER = [(768, 768), (768, 192), (768, 192), (768, 768), (768, 3072), (768, 3072), (3072, 768)]


def test_paper_train_compute_proxies():
    shapes = LAYER * 6
    d, lo = dense_cost(shapes), lora_cost(shapes, 128)
    assert train_compute_proxy("kd_full", d, lo) == 1.0
    assert analytic_mean_retention(0.0, 0.1, 0.3) == pytest.approx(0.2)
    assert analytic_mean_retention(0.4, 0.1, 0.3) == pytest.approx(0.52)
    assert train_compute_proxy("budgeted", d, lo, 0.2) == pytest.approx(0.38, abs=0.005)
    assert train_compute_proxy("budgeted", d, lo, 0.52) == pytest.approx(0.59, abs=0.005)
    assert train_compute_proxy("kd_lora", d, lo) == pytest.approx(0.914, abs=0.001)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="method='full'"):
        train_compute_proxy("full", 1, 1)
    with pytest.raises(ValueError, match="mean_retention"):
        train_compute_proxy("budgeted", 1, 1)
