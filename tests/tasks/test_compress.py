"""Stage: compress writes the Hugging Face export; a directory left by the earlier format
at the same stage path is rewritten, and what the pipeline reads from it stays the same."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, MistralConfig

from bl_core.compression import MANIFEST_NAME
from bl_core.config import TARGET_MODULES
from bl_core.student import build_student, inject_gated_lora
from bl_core.train_state import save_trained_student
from tasks.compress import compress_task

COMPRESSION = {"tau_drop": 0.05, "tau_svd": 0.5, "tau_rank": 0.5, "svd_max_rank": 8}


def _trained(tmp_path, tokenizer) -> dict:
    """A gated 2-layer student with drop/svd/keep retentions, saved as distill saves it.
    (tests/flows' conftest shadows the root one for imports: the tokenizer is a fixture.)"""
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=None,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    model = build_student(tmp_path / "teacher", num_layers=2)
    for i, (_, m) in enumerate(inject_gated_lora(model, rank=4, lora_alpha=8)):
        with torch.no_grad():
            m.lora_B.normal_(0.0, 0.05)
        m.set_retention((0.0, 0.3, 0.8)[i % 3])
    adapter = {"rank": 4, "lora_alpha": 8, "targets": list(TARGET_MODULES), "use_gates": True}
    save_trained_student(model, tmp_path / "trained", adapter)
    summary = {"final_fraction": 0.4, "realised_fraction": 0.39}
    return {"model_dir": str(tmp_path / "trained"), "fingerprint": "f0", "summary": summary}


def test_compress_writes_the_export_and_rewrites_an_earlier_one(tmp_path, tiny_tokenizer):
    trained = _trained(tmp_path, tiny_tokenizer)
    tokenizer = {"tokenizer_dir": str(tmp_path / "teacher")}
    (tmp_path / "out").mkdir()
    args = (str(tmp_path / "out"), "t/budgeted-F0.40/s0", trained, COMPRESSION, 4, tokenizer)
    result = compress_task.fn(*args, method="budgeted")
    out = tmp_path / "out" / "stages" / "compress"
    (directory,) = out.iterdir()
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "budgeted_lora_mistral"
    assert result["summary"]["dense_svd"] > 0 and result["model_dir"] == str(directory)
    assert result["manifest_path"] == str(directory / MANIFEST_NAME)
    card = (directory / "README.md").read_text()
    assert "| budget F requested | 0.40 |" in card and "t/budgeted-F0.40/s0" in card
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest | {"version": 1}))
    again = compress_task.fn(*args, method="budgeted")
    assert json.loads((directory / MANIFEST_NAME).read_text())["version"] == 2
    assert again["summary"] == result["summary"]
