import pytest

from bl_core.config import (
    BudgetedLoRAConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from bl_core.errors import ConfigError


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"budget": {"final_fraction": 1.3}}, "budget.final_fraction=1.3"),
        ({"budget": {"final_fraction": -0.1}}, "budget.final_fraction=-0.1"),
        ({"budget": {"schedule_start": 0.5, "schedule_end": 0.2}}, "schedule_start=0.5"),
        ({"lora": {"rank": 0}}, "lora.rank=0"),
        ({"compression": {"tau_drop": 0.6, "tau_svd": 0.5}}, "tau_drop=0.6 > tau_svd=0.5"),
        ({"lora": {"targets": ["q_proj", "qkv"]}}, "unknown target module(s) qkv"),
        ({"kd": {"temperature": 0}}, "kd.temperature=0"),
        ({"kd": {"kd_weight": 1.5}}, "kd.kd_weight=1.5"),
        ({"student": {"layer_selection": "random"}}, "student.layer_selection='random'"),
        ({"lora": {"rnak": 8}}, "lora.rnak"),
        ({"corpus": {"source": "jsonl"}}, "needs corpus.path"),
    ],
)
def test_bad_values_name_field_and_value(data, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert expected in str(err.value)


def test_defaults_are_the_papers():
    cfg = BudgetedLoRAConfig()
    assert (cfg.lora.rank, cfg.lora.lora_alpha, cfg.lora.scale) == (128, 256.0, 2.0)
    assert (cfg.budget.schedule_start, cfg.budget.schedule_end) == (0.1, 0.3)
    assert (cfg.kd.temperature, cfg.kd.kd_weight) == (3.0, 0.8)
    assert cfg.student.layer_selection == "mixed" and len(cfg.lora.targets) == 7


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = apply_overrides(BudgetedLoRAConfig(), {"budget.final_fraction": 0.0, "lora.rank": 8})
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    with pytest.raises(ConfigError, match="budget.nope: no such configuration field"):
        apply_overrides(cfg, {"budget.nope": 1})


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: {final_fraction: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
    bad.write_text("budget:\n  final_fraction: 7\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml.*budget.final_fraction=7"):
        load_config(bad)
