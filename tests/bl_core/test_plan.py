"""``bl plan`` on the paper's 0.13B teacher reproduces DESIGN §5/§7 worked examples."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ARCHITECTURES, make_arch_config

import bl_core
from bl_core.architecture import is_llama_family, llama_family_projections
from bl_core.cli import main
from bl_core.config import TARGET_MODULES, config_from_dict
from bl_core.plan import meta_projections, plan_budget

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


# -- the torch-free path: a Llama-family config.json, read without instantiating a model --
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("targets", [TARGET_MODULES, ("q_proj", "v_proj", "down_proj")])
def test_config_shapes_match_the_meta_device_model(arch, targets, tmp_path):
    config = make_arch_config(arch, num_layers=5, head_dim=16)  # head_dim != hidden / heads
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert is_llama_family(data)
    indices = [0, 2, 4]
    from_file = llama_family_projections(data, len(indices), targets)
    assert from_file == meta_projections(config, indices, targets)
    assert any(p.bias for p in from_file) == (arch in ("llama-biased", "qwen2", "qwen2-tied"))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_plan_from_config_json_equals_plan_from_the_model(arch, tmp_path):
    config = make_arch_config(arch, num_layers=6, hidden_size=64, intermediate_size=160)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    for fraction in (0.0, 0.3, 1.0):
        cfg = config_from_dict(
            {
                "student": {"num_layers": 3},
                "lora": {"rank": 4, "lora_alpha": 8.0},
                "budget": {"final_fraction": fraction},
            }
        )
        assert plan_budget(data, cfg, 200) == plan_budget(config, cfg, 200)


def test_bl_plan_on_a_llama_family_config_does_not_import_torch():
    code = (
        "import sys; from bl_core.cli import main; "
        f"rc = main(['plan', '--model-config', {str(PAPER_CONFIG)!r}, '--json']); "
        "print('torch' in sys.modules, 'transformers' in sys.modules, rc, file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stderr.strip().splitlines()[-1] == "False False 0", run.stderr
    assert json.loads(run.stdout)["dense_dropped"] == 33


def test_other_architectures_are_planned_on_the_meta_device(capsys, tmp_path):
    """Gemma is not read by the torch-free path; the plan comes from the model itself."""
    from transformers import AutoConfig

    AutoConfig.for_model(
        "gemma",
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    ).save_pretrained(tmp_path)
    assert main(["plan", "--model-config", str(tmp_path), "--student-layers", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in r["modules"][:2]] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
    ]
    assert [(m["d_in"], m["d_out"]) for m in r["modules"][:7]] == [
        (32, 32),
        (32, 16),
        (32, 16),
        (32, 32),
        (32, 64),
        (32, 64),
        (64, 32),
    ]
