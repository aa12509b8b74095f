"""A cell's MLflow params are that cell's own config (flows/cells.py)."""

from __future__ import annotations

from tasks.tracking import flatten


def _params(method: str, fraction: float | None, seed: int = 1) -> dict[str, str]:
    from flows.cells import cell_params
    from flows.preflight import grid_config

    cfg, _ = grid_config("micro", None, None, None, None)
    spec = {"teacher": "micro-m", "method": method, "final_fraction": fraction, "seed": seed,
            "label": f"micro-m/{method}"}  # fmt: skip
    return flatten(cell_params(cfg.model_dump(mode="json"), spec))


def test_a_budget_cell_logs_its_own_final_fraction_not_the_presets() -> None:
    params = _params("budgeted", 0.0)
    assert params["budget.final_fraction"] == "0.0"  # the preset says 0.4
    assert params["cell.final_fraction"] == "0.0" and params["cell.teacher"] == '"micro-m"'
    assert params["train.seed"] == "1" and params["cell.method"] == '"budgeted"'
    assert "compression.tau_svd" in params and "icl.num_shots" in params


def test_cells_without_a_budget_log_none() -> None:
    params = _params("kd_full", None)
    assert not any(key.startswith(("budget.", "lora.", "compression.")) for key in params)
    assert params["cell.final_fraction"] == "null" and params["kd.kd_weight"] == "0.8"
