"""``bl export SRC OUT``: a compressed student directory of the earlier format (stock
config.json, which plain transformers opens as a dense model with random projections)
becomes a Hugging Face model directory; measured speedups go in the model card."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_compressed_student, make_tokenizer

from bl_core.cli import main
from bl_core.compression import MANIFEST_NAME, load_compressed, save_compressed

IDS = torch.randint(2, 300, (1, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """(the compressed model, a directory of it as the earlier format wrote it)."""
    root = tmp_path_factory.mktemp("cli-export")
    model, plans = make_compressed_student("qwen2-tied", root)
    save_compressed(model, plans, root / "new", lora_rank=4, tokenizer=make_tokenizer())
    old = root / "old"
    old.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(root / "new" / name, old / name)
    model.config.save_pretrained(old)  # the stock config: model_type qwen2
    manifest = json.loads((root / "new" / MANIFEST_NAME).read_text())
    (old / MANIFEST_NAME).write_text(json.dumps(manifest | {"version": 1}))
    return model, old


def test_bl_export_converts_and_records_measured_speed(earlier, tmp_path, capsys):
    model, old = earlier
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"forward_speedup_measured": 1.25, "device": "cpu"}))
    argv = ["export", str(old), str(tmp_path / "hf"), "--speed", str(speed)]
    assert main(argv + ["--final-fraction", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "model_type budgeted_lora_qwen2" in printed and "trust_remote_code=True" in printed
    with torch.no_grad():
        expected = model(IDS).logits
        torch.testing.assert_close(load_compressed(tmp_path / "hf")(IDS).logits, expected)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| measured speedup, whole forward | 1.25x |" in card
    assert "| budget F requested | 0.40 |" in card
    assert oct((tmp_path / "hf" / "model.safetensors").stat().st_mode)[-3:] == "644"


def test_bl_export_refuses_to_overwrite_and_names_bad_inputs(earlier, tmp_path, capsys):
    _, old = earlier
    (tmp_path / "taken").mkdir()
    assert main(["export", str(old), str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a compressed student" in capsys.readouterr().err
