"""``bl plan`` on the paper's 0.13B teacher reproduces DESIGN §5/§7 worked examples."""

import json
from pathlib import Path

import pytest

import bl_core
from bl_core.cli import main

PAPER_CONFIG = Path(bl_core.__file__).parent / "presets" / "models" / "mistral-0.13b.json"
PAPER_FLAGS = [
    "--model-config",
    str(PAPER_CONFIG),
    "--student-layers",
    "6",
    "--layer-selection",
    "mixed",
    "--rank",
    "128",
    "--lora-alpha",
    "256",
    "--schedule-start",
    "0.1",
    "--schedule-end",
    "0.3",
]


def _plan(capsys, *flags):
    assert main(["plan", *PAPER_FLAGS, *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_figures_at_f0(capsys):
    r = _plan(capsys, "--final-fraction", "0.0")
    assert (r["dense_kept"], r["dense_svd"], r["dense_dropped"]) == (0, 0, 42)
    assert r["avg_rank"] == 128
    assert r["infer_speedup_mac"] == pytest.approx(4.05, abs=0.005)
    assert r["param_reduction_vs_lora"] == pytest.approx(0.802, abs=0.0005)
    assert r["train_compute_proxy"] == pytest.approx(0.38, abs=0.005)
    assert r["student_layer_indices"] == [0, 2, 4, 7, 9, 11]


def test_paper_figures_at_f04(capsys):
    r = _plan(capsys, "--final-fraction", "0.4")
    assert (r["dense_kept"], r["dense_svd"], r["dense_dropped"]) == (9, 0, 33)
    assert r["infer_speedup_mac"] == pytest.approx(1.74, abs=0.005)
    assert r["param_reduction_vs_lora"] == pytest.approx(0.539, abs=0.0005)
    assert r["train_compute_proxy"] == pytest.approx(0.59, abs=0.005)
    assert r["kd_lora_train_compute_proxy"] == pytest.approx(0.914, abs=0.001)
    assert r["realised_fraction"] == pytest.approx(0.4, abs=1e-3)
    mods = r["modules"]
    assert len(mods) == 42
    attention = [m for m in mods if "self_attn" in m["name"]]
    mlp = [m for m in mods if ".mlp." in m["name"]]
    assert all(m["alpha"] == 0.0 for m in attention)  # all 24 attention projections gone
    assert sum(m["alpha"] == 0.0 for m in mlp) == 9
    assert sum(m["alpha"] == 1.0 for m in mlp) == 8
    partial = [m["alpha"] for m in mlp if 0 < m["alpha"] < 1]
    assert partial == [pytest.approx(0.70, abs=0.01)]
    assert {"name", "d_in", "d_out", "alpha", "form", "rank"} <= set(mods[0])


def test_plan_table_and_config_yaml(capsys, tmp_path):
    cfg = tmp_path / "plan.yaml"
    cfg.write_text("budget:\n  final_fraction: 0.0\nlora:\n  rank: 64\n  lora_alpha: 128\n")
    assert main(["plan", "--model-config", str(PAPER_CONFIG), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "dense kept / svd / dropped:       0 / 0 / 42" in out
    assert "inference speedup (MAC)" in out


def test_plan_bad_input_exits_2_with_one_clear_line(capsys, tmp_path):
    assert main(["plan", *PAPER_FLAGS, "--final-fraction", "1.3"]) == 2
    assert "budget.final_fraction=1.3" in capsys.readouterr().err
    assert main(["plan", "--model-config", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    assert main(["plan", *PAPER_FLAGS, "--targets", "q_proj,foo"]) == 2
    assert "unknown target module(s) foo" in capsys.readouterr().err
