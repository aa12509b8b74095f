"""``bl eval MODEL --lm-eval TASKS``: lm-evaluation-harness scores the loaded model object
(a compressed student here) on a tiny task defined in the test tree over a local JSON file
(``tests/fixtures/lm_eval``), offline; the harness's results JSON lands beside ours."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import make_compressed_student, make_tokenizer

from bl_core.cli import main
from bl_core.compression import save_compressed

TASKS_DIR = Path(__file__).parents[1] / "fixtures" / "lm_eval"
pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("harness")
    model, plans = make_compressed_student("mistral", root)
    save_compressed(model, plans, root / "student", lora_rank=4, tokenizer=make_tokenizer())
    return root / "student"


def test_lm_eval_scores_the_compressed_student_on_a_local_task(student_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["eval", str(student_dir), "--lm-eval", "bl_tiny_qa"]
    assert main(argv + ["--lm-eval-include", str(TASKS_DIR), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    harness = json.loads((tmp_path / "eval.lm_eval.json").read_text())
    acc = harness["results"]["bl_tiny_qa"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and harness["n-samples"]["bl_tiny_qa"]["effective"] == 12
    assert f"bl_tiny_qa               acc        {acc:.3f}" in printed
    ours = json.loads(out.read_text())
    assert ours["lm_eval"]["results"]["bl_tiny_qa"]["acc,none"] == acc
    assert ours["lm_eval"]["path"] == str(tmp_path / "eval.lm_eval.json")


def test_without_lm_eval_installed_the_error_says_how_to_install(student_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    assert main(["eval", str(student_dir), "--lm-eval", "bl_tiny_qa"]) == 2
    assert "pip install -e '.[eval]'" in capsys.readouterr().err
