"""``bl train`` on the micro preset: data, ladder and one budgeted run, end to end."""

import json

import pytest

from bl_core.cli import main
from bl_core.packing import load_packed
from bl_core.perplexity import perplexity
from bl_core.student import load_pretrained

pytestmark = pytest.mark.slow


def test_bl_train_micro_end_to_end_and_finished_run_is_reused(tmp_path, capsys):
    args = [
        "train",
        "--config",
        "micro",
        "--out",
        str(tmp_path),
        "--method",
        "budgeted",
        "--final-fraction",
        "0.0",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "micro-m" / "budgeted-F0.00"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_removed"] == summary["num_modules"] == 7
    assert summary["realised_fraction"] == 0.0
    assert f"trained student: {run_dir / 'final'}" in out
    assert (run_dir / "metrics.jsonl").read_text().count("\n") >= 4
    # the ladder: the larger teacher fits the held-out text better
    (data_dir,) = (tmp_path / "data").iterdir()
    val = load_packed(data_dir / "val")
    ppl = {
        name: perplexity(load_pretrained(tmp_path / "teachers" / name / "final"), val)["perplexity"]
        for name in ("micro-s", "micro-m")
    }
    assert ppl["micro-m"] < ppl["micro-s"]
    assert main(args) == 0  # second time: nothing retrained, same summary
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_bl_train_unknown_teacher_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--config", "micro", "--out", str(tmp_path), "--teacher", "huge"]) == 2
    assert (
        "teacher 'huge' is not in the ladder (known: micro-s, micro-m)" in capsys.readouterr().err
    )
