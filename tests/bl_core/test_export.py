"""The compressed student as a Hugging Face model directory (DESIGN §5.3), on every
architecture of the real-ladder matrix: loaded by transformers alone in a clean interpreter
(remote code) and by the Auto classes the project registers (no remote code), with the
logits and greedy tokens of the project's own compressed model, on every form.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, make_compressed_student, make_tokenizer
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from bl_core.compression import MANIFEST_NAME, load_compressed, save_compressed
from bl_core.export import convert_legacy, load_export
from bl_core.hf.modeling_budgeted_lora import LowRankLinear
from bl_core.weights import save_weights

CHILD = Path(__file__).with_name("transformers_only.py")
IDS = torch.randint(2, 300, (2, 12), generator=torch.Generator().manual_seed(5))
GENERATE = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False, "pad_token_id": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """name -> (the project's compressed model, its exported directory), for every
    architecture (budgeted, all three forms) and two KD LoRA students (all dense)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in [*sorted(ARCHITECTURES), "kd_lora:llama-tied", "kd_lora:qwen2"]:
        arch = name.removeprefix("kd_lora:")
        model, plans = make_compressed_student(
            arch, root / name.replace(":", "-"), "kd_lora" in name
        )
        directory = root / name.replace(":", "-") / "compressed"
        extra = {"label": f"{arch}/test", "final_fraction": 0.4}
        save_compressed(
            model, plans, directory, lora_rank=4, extra=extra, tokenizer=make_tokenizer()
        )
        out[name] = (model, directory)
    return out


@pytest.fixture(scope="module")
def transformers_only(exported, tmp_path_factory) -> tuple[dict, Path]:
    """Results of :data:`CHILD`: every exported dir loaded in one clean interpreter."""
    out_dir = tmp_path_factory.mktemp("child")
    job = {
        "models": {name: str(d) for name, (_, d) in exported.items()},
        "ids": IDS.tolist(),
        "generate": GENERATE,
        "resave": "llama-tied",
    }
    (out_dir / "job.json").write_text(json.dumps(job))
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(out_dir / "modules"), "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(CHILD), sysconfig.get_paths()["purelib"]]
        + [str(out_dir / "job.json"), str(out_dir)],
        cwd=out_dir,
        env=env,
        stdin=subprocess.DEVNULL,  # transformers may prompt before refusing remote code
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / "results.json").read_text()), out_dir


def _own_tokens(model, use_cache: bool = True) -> list[list[int]]:
    with torch.no_grad():
        return model.generate(IDS[:, :4], use_cache=use_cache, **GENERATE).tolist()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_every_architecture_loads_with_transformers_alone(exported, transformers_only):
    """Must show: a clean interpreter (no project on sys.path) loads each export with
    trust_remote_code, its logits equal ours within 1e-5 (fp32, every form) and its greedy
    20 tokens, with and without the KV cache, are our own model's."""
    results, out_dir = transformers_only
    for name, (model, _) in exported.items():
        r = results[name]
        own = _own_tokens(model)
        assert r["tokens_cache_True"] == own, name
        assert r["tokens_cache_False"] == own, name
        assert len(own[0]) == 4 + 20
        logits = load_file(str(out_dir / f"{name}.safetensors"))["logits"]
        torch.testing.assert_close(logits, _logits(model), rtol=0, atol=1e-5, msg=name)


def test_plain_transformers_refuses_a_compressed_dir_but_opens_a_kd_lora_one(transformers_only):
    results, _ = transformers_only
    for name, r in results.items():
        if name.startswith("kd_lora:"):  # all dense: a stock checkpoint, no remote code
            assert r["plain_load"] == "loaded"
            assert r["class"].startswith("transformers.models."), r["class"]
        else:  # never a dense model with random projections
            assert "trust_remote_code" in r["plain_load"], r["plain_load"]
            assert r["class"].endswith(
                ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
            )
            assert ".modeling_budgeted_lora." in r["class"]


def test_save_pretrained_of_the_remote_code_model_is_bit_exact(transformers_only):
    r = transformers_only[0]["llama-tied"]
    assert r["resave_bit_exact"]
    assert "modeling_budgeted_lora.py" in r["resave_files"]


def test_export_is_the_base_config_plus_each_modules_form_and_rank(exported):
    model, directory = exported["qwen2"]
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "budgeted_lora_qwen2"
    assert config["architectures"] == ["BudgetedLoRAQwen2ForCausalLM"]
    assert list(config["auto_map"]) == ["AutoConfig", "AutoModel", "AutoModelForCausalLM"]
    assert config["hidden_size"] == model.config.hidden_size
    assert config["bl_teacher_layer_indices"] == [0, 3]
    modules = config["compressed_modules"]
    assert len(modules) == 14 and {m["form"] for m in modules.values()} == {"dense", "low_rank"}
    q = modules["model.layers.0.self_attn.q_proj"]  # retention 0: dropped, LoRA rank 3
    assert q == {"form": "low_rank", "rank": 3, "bias": False}
    k = modules["model.layers.0.self_attn.k_proj"]  # svd: ceil(8 * 0.3 / 0.5) + 3, with bias
    assert k == {"form": "low_rank", "rank": 8, "bias": True}
    files = {p.name for p in directory.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "README.md"}
    assert expected | {"modeling_budgeted_lora.py", MANIFEST_NAME, "tokenizer.json"} <= files
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert manifest["version"] == 2 and {m["form"] for m in manifest["modules"]} == {
        "drop",
        "svd",
        "keep",
    }


def test_kd_lora_student_is_a_plain_stock_checkpoint(exported):
    _, directory = exported["kd_lora:qwen2"]
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "auto_map" not in config
    assert "compressed_modules" not in config
    assert not (directory / "modeling_budgeted_lora.py").exists()
    saved = load_file(str(directory / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.bias" in saved  # merged dense keeps Qwen2's bias


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_registered_classes_load_without_remote_code(exported, name):
    """With the project imported, from_pretrained needs no remote code, and the project's
    own loader goes through the same classes."""
    model, directory = exported[name]
    via_auto = AutoModelForCausalLM.from_pretrained(directory)
    ours = load_compressed(directory)
    assert type(via_auto) is type(ours)
    assert type(ours).__module__ == "bl_core.hf.modeling_budgeted_lora"
    torch.testing.assert_close(_logits(ours), _logits(model), rtol=0, atol=1e-5)
    tied = name.endswith("-tied")
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    forms = {type(m) for n, m in ours.named_modules() if n.endswith("_proj")}
    assert forms == {torch.nn.Linear, LowRankLinear}


def test_bf16_and_device_placement_load(exported):
    model, directory = exported["mistral"]
    bf16 = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_logits(bf16).float(), _logits(model), rtol=0.1, atol=0.1)
    placed = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu").to("cpu")
    assert {p.device.type for p in placed.parameters()} == {"cpu"}
    assert len(_own_tokens(placed)[0]) == 24


def test_save_pretrained_from_pretrained_is_bit_exact(exported, tmp_path):
    _, directory = exported["llama-biased"]
    loaded = AutoModelForCausalLM.from_pretrained(directory)
    loaded.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    a, b = loaded.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "again" / "modeling_budgeted_lora.py").is_file()
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert list(config["auto_map"]) == ["AutoConfig", "AutoModel", "AutoModelForCausalLM"]
    original = json.loads((directory / "config.json").read_text())
    assert config["compressed_modules"] == original["compressed_modules"]


def _save_v1(model, plans, directory: Path) -> None:
    """A directory as the earlier format wrote it: stock config.json, safetensors and a
    version-1 manifest holding the structure."""
    from dataclasses import asdict

    from bl_core.costs import compression_summary

    directory.mkdir(parents=True)
    model.config.save_pretrained(directory)
    save_weights(model, directory / "model.safetensors")
    manifest = {
        "format": "budgeted-lora-compressed",
        "version": 1,
        "summary": compression_summary(plans, 4),
        "modules": [asdict(p) | {"rank": p.rank} for p in plans],
        "label": "tiny/budgeted-F0.40/s0",
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    make_tokenizer().save_pretrained(directory)


def test_earlier_directories_load_and_convert(tmp_path):
    model, plans = make_compressed_student("llama-tied", tmp_path)
    legacy = tmp_path / "legacy"
    _save_v1(model, plans, legacy)
    assert AutoConfig.from_pretrained(legacy).model_type == "llama"
    torch.testing.assert_close(_logits(load_compressed(legacy)), _logits(model), rtol=0, atol=0)
    converted = convert_legacy(legacy, tmp_path / "hf", speed={"generate_speedup_measured": 1.5})
    assert AutoConfig.from_pretrained(converted).model_type == "budgeted_lora_llama"
    torch.testing.assert_close(_logits(load_export(converted)), _logits(model), rtol=0, atol=0)
    card = (converted / "README.md").read_text()
    assert "tiny/budgeted-F0.40/s0" in card and "1.50x" in card
    with pytest.raises(FileExistsError):
        convert_legacy(legacy, converted)
