"""Smoke test of the benchmark scripts in ``benchmarks/``: each ``main()`` runs with
``--quick`` (toy model, 2 repeats, 1 thread) and writes the JSON it promises.

Structure and bookkeeping only — no timing assertions: the machine is shared and noisy.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"

TOP_KEYS = {"benchmark", "environment", "settings", "results", "goals"}
ENV_KEYS = {
    "cpu_model",
    "cpu_cores",
    "load_average",
    "torch_version",
    "num_threads",
    "device",
    "dtype",
}
SETTINGS_KEYS = {"tokens", "repeats", "warmup", "seed", "threads", "quick", "device"}
GOAL_KEYS = {"name", "measured", "threshold", "comparison", "passed"}


@pytest.fixture
def bench(monkeypatch):
    """Import a script from benchmarks/ (they import their sibling ``_common``)."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    threads = torch.get_num_threads()
    yield lambda name: importlib.import_module(name)
    torch.set_num_threads(threads)  # --quick sets 1 thread for the whole process
    for path in BENCH_DIR.glob("*.py"):  # their generic names must not leak to other tests
        sys.modules.pop(path.stem, None)


def _run(bench, name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert bench(name).main(["--quick", "--device", "cpu", "--json", str(out), *extra]) == 0
    payload = json.loads(out.read_text())
    assert TOP_KEYS <= payload.keys()
    assert payload["benchmark"] == name
    assert ENV_KEYS <= payload["environment"].keys()
    assert SETTINGS_KEYS <= payload["settings"].keys()
    assert payload["settings"]["quick"] is True and payload["settings"]["repeats"] == 2
    for g in payload["goals"]:
        assert GOAL_KEYS <= g.keys()
        assert (g["passed"] is None) == (g["threshold"] is None)  # reported figures: no verdict
    return payload


def test_compressed_modules(bench, tmp_path):
    r = _run(bench, "compressed_modules", tmp_path)
    assert [x["final_fraction"] for x in r["results"]] == [0.0, 0.4]
    for budget in r["results"]:
        assert {"speedup_measured", "speedup_mac", "measured_over_mac", "dense_ms"} <= budget.keys()
        assert budget["speedup_mac"] == pytest.approx(budget["plan_speedup_mac"])
        assert budget["num_modules"] == 14  # 2 student layers x 7 projections
        kinds = [g["group"] for g in budget["per_projection"]]
        assert kinds == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    f0 = r["results"][0]
    assert (f0["dense_kept"], f0["dense_svd"], f0["dense_dropped"]) == (0, 0, 14)
    assert len(r["goals"]) == 2


def test_end_to_end(bench, tmp_path):
    r = _run(bench, "end_to_end", tmp_path, "--budgets", "0.4")
    (row,) = r["results"]
    keys = {
        "forward_ms_dense",
        "forward_ms_compressed",
        "forward_speedup_measured",
        "forward_mac_limit",
        "forward_measured_over_limit",
        "generate_tokens_per_s_dense",
        "generate_tokens_per_s_compressed",
        "generate_speedup_measured",
        "generate_mac_limit",
        "generate_measured_over_limit",
        "modules_speedup_mac",
    }
    assert keys <= row.keys()
    # attention and the LM head are not compressed: the whole model gains less
    assert 1.0 < row["forward_mac_limit"] < row["modules_speedup_mac"]


def test_training_step(bench, tmp_path):
    r = _run(bench, "training_step", tmp_path)
    whole = {x["side"]: x for x in r["results"] if x["scope"] == "whole_step"}
    modules = {x["side"]: x for x in r["results"] if x["scope"] == "adapted_modules"}
    ours = {"kd_full", "kd_lora", "budgeted start", "budgeted F=0", "budgeted F=0.4"}
    assert set(whole) == ours | {"peft_lora"}
    assert set(modules) == ours  # the proxy's scope: our sides' adapted projections
    for row in whole.values():
        assert {"step_ms", "tokens_per_s", "time_vs_kd_full", "proxy"} <= row.keys()
        assert "whole_step_mac_vs_kd_full" in row
    for side, row in modules.items():
        assert row["proxy"] == whole[side]["proxy"]
        assert row["time_over_proxy"] == pytest.approx(row["time_vs_kd_full"] / row["proxy"])
    assert whole["kd_full"]["proxy"] == 1.0 and modules["kd_full"]["time_vs_kd_full"] == 1.0
    assert whole["budgeted start"]["retained_fraction"] == 1.0
    assert whole["budgeted F=0"]["retained_fraction"] == 0.0  # the controller really ran
    assert whole["budgeted F=0.4"]["retained_fraction"] == pytest.approx(0.4, abs=0.01)
    assert whole["peft_lora"]["proxy"] == pytest.approx(whole["kd_lora"]["proxy"])
    judged = [g["name"] for g in r["goals"] if g["passed"] is not None]
    # per budget: after the window vs kd_full and vs kd_lora on the proxy's scope; + ours vs PEFT
    assert len(judged) == 2 * 2 + 1
    assert all(n.startswith("[adapted modules]") for n in judged[:-1])
    # reported per budget: the whole-run estimate (both scopes), the whole step after the
    # window vs kd_full and vs kd_lora
    reported = [g["name"] for g in r["goals"] if g["passed"] is None]
    assert len(reported) == 2 * (2 + 2)
    assert sum(n.startswith("[whole step]") for n in reported) == 2 * 3


def test_gated_overhead(bench, tmp_path):
    r = _run(bench, "gated_overhead", tmp_path)
    shapes = [x["shape"] for x in r["results"]]
    assert shapes == ["128->128", "128->32", "128->512", "512->128", "layer"]
    for row in r["results"]:
        assert {
            "peft_ms",
            "gated_ms",
            "plain_ms",
            "gated_over_peft",
            "plain_over_peft",
        } <= row.keys()
    assert sum(x.get("count_per_layer", 0) for x in r["results"]) == 7
