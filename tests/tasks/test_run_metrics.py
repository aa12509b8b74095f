"""What a cell's MLflow run shows (tasks/run_metrics.py): the headline metrics under their
short names, in the report's units, and everything else as one table."""

from __future__ import annotations

import pytest

from tasks.report_tables import format_table, table2
from tasks.run_metrics import HEADLINE, detail_table, headline_metrics, is_module_metric

BUDGETED = {
    "teacher": "tiny-s", "method": "budgeted", "final_fraction": 0.0, "label": "x", "ppl": 338.9779,
    "icl": {"composite": {"mean": 0.0052, "std": 0.0},
            "tasks": {"word_length": {"mean": 0.1, "std": 0.0}}},
    "train": {"train_compute_proxy": 0.465743, "realised_fraction": 0.0, "tokens_per_s": 11983.81},
    "compression": {"infer_speedup_mac": 3.69863, "param_reduction_vs_lora": 0.787172,
                    "dense_kept": 0},
    "speed": {"modules_speedup_measured": 0.733997, "forward_ms_dense": 3.5025},
}  # fmt: skip


def test_headline_names_units_and_rounding() -> None:
    assert headline_metrics(BUDGETED) == {
        "ppl": 338.978,
        "icl_composite": 0.52,  # %, as Table 9 prints it (0-1 fraction before)
        "speedup_mac": 3.699,
        "speedup_measured": 0.734,
        "param_reduction": 78.72,  # %, as Table 2 prints it
        "realised_fraction": 0.0,
        "train_compute": 0.4657,
    }
    assert set(headline_metrics(BUDGETED)) == set(HEADLINE)


def test_headline_agrees_with_the_report_table() -> None:
    shown = format_table(table2([BUDGETED])).loc["Budgeted F=0.0"]
    metrics = headline_metrics(BUDGETED)
    assert shown["PPL tiny-s"] == f"{metrics['ppl']:.2f}"
    assert shown["Infer speedup (MAC)"] == f"{metrics['speedup_mac']:.2f}×"
    assert shown["Param red. vs LoRA"] == f"{metrics['param_reduction']:.1f}%"


def test_uncompressed_students_get_the_by_construction_values() -> None:
    kd_full = {"teacher": "t", "method": "kd_full", "ppl": 20.0, "train": {}}
    assert headline_metrics(kd_full) == {
        "ppl": 20.0,
        "speedup_mac": 1.0,
        "param_reduction": 0.0,
        "train_compute": 1.0,
    }
    assert headline_metrics({"status": "ok", "train": {"tokens_per_s": 5.0}}) == {}  # pretraining


def test_details_hold_every_other_number_once() -> None:
    rows = {(r.section, r.name): r.value for r in detail_table(BUDGETED).itertuples()}
    assert rows == {
        ("icl %", "word_length"): 10.0,
        ("train", "tokens_per_s"): 11983.81,
        ("compression", "dense_kept"): 0.0,
        ("speed", "forward_ms_dense"): 3.5025,
    }  # headline sources (speedups, param reduction, compute, realised F) are not repeated


@pytest.mark.parametrize(
    ("key", "module"),
    [("alpha/L0.q_proj", True), ("rank/L1.down_proj", True), ("loss", False), ("lr", False)],
)
def test_module_metrics(key: str, module: bool) -> None:
    assert is_module_metric(key) is module
