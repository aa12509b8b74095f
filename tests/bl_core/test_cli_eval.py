"""``bl eval`` end to end on a tiny random model saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_mistral, make_tokenizer

from bl_core.cli import main
from bl_core.probes import TASKS

FV_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fv"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_mistral(num_layers=2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validation set in the on-disk packed format (DESIGN §8, bl_core.packing)."""
    path = tmp_path_factory.mktemp("packed") / "val"
    path.mkdir()
    rows = np.random.default_rng(1).integers(0, 300, size=(3, 16)).astype(np.uint16)
    rows.tofile(path / "tokens.bin")
    meta = {"seq_len": 16, "dtype": "uint16", "num_sequences": 3, "num_tokens": 48}
    meta |= {"eos_token_id": 0, "fingerprint": "test"}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_full_suite_and_perplexity_write_json(model_dir, packed_dir, tmp_path, capsys) -> None:
    out = tmp_path / "res" / "eval.json"
    argv = ["eval", str(model_dir), "--icl", "--items-per-task", "3", "--seeds", "0", "1"]
    argv += ["--num-shots", "3", "--max-new-tokens", "2", "--ppl-data", str(packed_dir)]
    argv += ["--out", str(out), "--device", "cpu"]
    assert main(argv) == 0

    results = json.loads(out.read_text())
    icl = results["icl"]
    assert list(icl["tasks"]) == list(TASKS)
    assert {"mean", "std", "per_seed"} <= set(icl["composite"])
    assert icl["num_shots"] == 3 and icl["seeds"] == [0, 1] and icl["items_per_task"] == 3
    assert icl["format"]["query_prefix"] == "Q:" and icl["format"]["answer_prefix"] == "A:"
    assert results["perplexity"]["num_tokens"] == 3 * 15
    assert results["perplexity"]["perplexity"] > 1.0
    printed = capsys.readouterr().out
    assert "composite" in printed and "next_capital_letter" in printed and "perplexity:" in printed


def test_fv_dir_and_a_task_subset(model_dir, tmp_path) -> None:
    out = tmp_path / "eval.json"
    argv = ["eval", str(model_dir), "--fv-dir", str(FV_FIXTURES), "--tasks", "capitalize"]
    argv += ["next_item", "--num-shots", "2", "--max-new-tokens", "1", "--seeds", "5"]
    argv += ["--query-prefix", "Q: ", "--out", str(out)]
    assert main(argv) == 0  # an ICL flag switches the suite on without --icl
    icl = json.loads(out.read_text())["icl"]
    assert list(icl["tasks"]) == ["capitalize", "next_item"]
    assert icl["tasks"]["capitalize"]["num_items"] == 6 and icl["data"] == str(FV_FIXTURES)
    assert icl["format"]["query_prefix"] == "Q: "


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to evaluate"),
        (["--tasks", "antonym"], "unknown ICL task 'antonym'; known tasks: alphabetically"),
        (["--icl", "--num-shots", "-1"], "icl.num_shots=-1"),
        (["--ppl-data", "/nonexistent/val"], "/nonexistent/val"),
    ],
)
def test_user_errors_exit_2_with_a_message(model_dir, capsys, extra, message) -> None:
    assert main(["eval", str(model_dir), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_or_tokenizer_is_named(packed_dir, tmp_path, capsys) -> None:
    missing = tmp_path / "no_model"
    assert main(["eval", str(missing), "--ppl-data", str(packed_dir)]) == 2
    assert f"model directory {str(missing)!r} does not exist" in capsys.readouterr().err
    assert main(["eval", str(missing), "--icl", "--tokenizer", str(tmp_path)]) == 2
    assert f"cannot load a tokenizer from {str(tmp_path)!r}" in capsys.readouterr().err


def test_a_preset_and_set_overrides_like_every_command(model_dir, tmp_path) -> None:
    out = tmp_path / "eval.json"
    argv = ["eval", str(model_dir), "--config", "micro", "--set", "icl.num_shots=1"]
    argv += ["--set", f"icl.data_dir={FV_FIXTURES}", "--tasks", "capitalize", "--out", str(out)]
    assert main(argv + ["--set", "icl.items_per_task=2", "--seeds", "0"]) == 0
    icl = json.loads(out.read_text())["icl"]
    assert icl["num_shots"] == 1 and icl["items_per_task"] == 2  # --set over the preset's 4


def test_bad_icl_data_fails_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import bl_core.checkpoint

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(bl_core.checkpoint, "load_causal_lm", no_model)
    (tmp_path / "capitalize.json").write_text("{not json")
    assert main(["eval", str(model_dir), "--fv-dir", str(tmp_path), "--tasks", "capitalize"]) == 2
    assert "capitalize.json" in capsys.readouterr().err
    out = tmp_path / "capitalize.json" / "eval.json"  # under a file
    assert main(["eval", str(model_dir), "--icl", "--out", str(out)]) == 2
    assert f"--out={str(out)!r}" in capsys.readouterr().err
