"""The standalone modeling code and vLLM's Transformers-backend contract, on CPU: vLLM
resolves the architecture through ``auto_map`` (``AutoModel``), checks
``is_backend_compatible()``, builds the *base* model, replaces attention with its own
function through transformers' registry (``config._attn_implementation``) and passes its
extra keyword arguments through the forward to that function.
"""

from __future__ import annotations

import ast
import json

import pytest
import torch
from conftest import make_arch_config
from safetensors.torch import load_file
from transformers import AttentionInterface, AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bl_core.hf import MODELING_FILE, modeling_budgeted_lora
from bl_core.hf.modeling_budgeted_lora import ARCHITECTURES, LowRankLinear


def test_the_modeling_file_imports_only_torch_and_transformers():
    roots = set()
    for node in ast.walk(ast.parse(MODELING_FILE.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import would not travel with the file"
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "typing", "torch", "transformers"}


@pytest.mark.parametrize("base_type", sorted(ARCHITECTURES))
def test_every_class_is_vllm_backend_compatible(base_type):
    config_cls, base_cls, causal_cls = ARCHITECTURES[base_type]
    assert config_cls.model_type == f"budgeted_lora_{base_type}"
    for cls in (base_cls, causal_cls):
        assert cls.is_backend_compatible() and cls._supports_attention_backend
        assert cls.config_class is config_cls
    assert AutoConfig.for_model(config_cls.model_type).__class__ is config_cls


def _config(base_type: str = "qwen2", attn: str | None = None):
    """A 2-layer compressed config: q_proj of layer 0 low-rank (rank 3), k_proj dense."""
    base = make_arch_config(base_type, num_layers=2).to_dict()
    config_cls = ARCHITECTURES[base_type][0]
    modules = {
        "model.layers.0.self_attn.q_proj": {"form": "low_rank", "rank": 3, "bias": True},
        "model.layers.0.self_attn.k_proj": {"form": "dense", "rank": 0, "bias": True},
    }
    config = config_cls(
        **{k: v for k, v in base.items() if k != "model_type"}, compressed_modules=modules
    )
    if attn is not None:
        config._attn_implementation = attn
    return config


def test_the_base_model_vllm_builds_has_the_low_rank_modules_under_checkpoint_names(tmp_path):
    torch.manual_seed(0)
    causal = AutoModelForCausalLM.from_config(_config())
    causal.save_pretrained(tmp_path)
    with torch.device("meta"):  # as vLLM builds it
        base = AutoModel.from_config(AutoConfig.from_pretrained(tmp_path))
    assert isinstance(base, ARCHITECTURES["qwen2"][1])
    assert isinstance(base.layers[0].self_attn.q_proj, LowRankLinear)
    assert isinstance(base.layers[0].self_attn.k_proj, torch.nn.Linear)
    checkpoint = set(load_file(str(tmp_path / "model.safetensors")))
    assert {f"model.{k}" for k in base.state_dict()} == checkpoint - {"lm_head.weight"}
    assert "model.layers.0.self_attn.q_proj.up.bias" in checkpoint


def test_attention_goes_through_the_registry_with_the_callers_kwargs():
    calls = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, kwargs.get("vllm_marker")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("bl_probe", probe)
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(attn="sdpa")).eval()
    ids = torch.randint(0, 300, (1, 6))
    with torch.no_grad():
        reference = model(input_ids=ids, use_cache=False).last_hidden_state
        model.config._attn_implementation = "bl_probe"  # what vLLM does, with "vllm"
        out = model(input_ids=ids, use_cache=False, vllm_marker="seen").last_hidden_state
    assert calls == [(0, "seen"), (1, "seen")]
    torch.testing.assert_close(out, reference)


def test_a_config_naming_a_missing_or_odd_module_fails_loudly():
    config = _config()
    config.compressed_modules = {"model.layers.7.mlp.up_proj": {"form": "low_rank", "rank": 2}}
    with pytest.raises(ValueError, match=r"layers\.7\.mlp\.up_proj.*no such module"):
        AutoModelForCausalLM.from_config(config)
    config.compressed_modules = {"model.layers.0.mlp.up_proj": {"form": "sparse", "rank": 2}}
    with pytest.raises(ValueError, match="needs a form"):
        AutoModelForCausalLM.from_config(config)
    config.compressed_modules = {"model.layers.0.mlp.up_proj": {"form": "dense", "bias": True}}
    with pytest.raises(ValueError, match="needs a form"):  # no rank
        AutoModelForCausalLM.from_config(config)


def test_the_package_copy_is_what_an_export_ships(tmp_path):
    AutoModelForCausalLM.from_config(_config()).save_pretrained(tmp_path)
    shipped = (tmp_path / MODELING_FILE.name).read_text()
    assert shipped == MODELING_FILE.read_text() == open(modeling_budgeted_lora.__file__).read()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_budgeted_lora.BudgetedLoRAQwen2Model"
