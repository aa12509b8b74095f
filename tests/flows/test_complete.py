"""The completed-grid record (flows/complete.py): what makes a rerun answer without the
flow, and everything that must send it back to the flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bl_core.config import apply_overrides
from bl_core.preset_files import resolve_config
from flows import complete

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def micro():
    return resolve_config("micro")[0]


def test_the_key_covers_config_selection_files_and_code(micro, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # earlier tests' runs set it
    key = complete.grid_key(micro, None)
    assert complete.grid_key(micro, None) == key  # deterministic
    assert complete.grid_key(apply_overrides(micro, {"lora.rank": 4}), None) != key
    assert complete.grid_key(micro, ["micro-s"]) != key
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "one"}\n')
    local = apply_overrides(micro, {"corpus.source": "jsonl", "corpus.path": str(corpus)})
    local_key = complete.grid_key(local, None)
    corpus.write_text('{"text": "two"}\n')  # same path, new content
    assert complete.grid_key(local, None) != local_key
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert complete.grid_key(micro, None) != key
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code = tmp_path / "code"
    for name in complete.CODE_DIRS:
        shutil.copytree(ROOT / name, code / name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(complete, "PROJECT_ROOT", code)
    copied = complete.grid_key(micro, None)
    assert copied == key  # the same code elsewhere
    report = code / "tasks" / "report_tables.py"
    report.write_text(report.read_text() + "\n# an edit\n")
    assert complete.grid_key(micro, None) != key


def _finished_grid(out: Path) -> dict:
    """A grid's report and one stage artifact, as the flow leaves them."""
    model = out / "stages" / "distill" / "abc" / "final"
    model.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(model / "model.safetensors"))
    report = out / "report"
    report.mkdir()
    (report / "report.md").write_text("# report\n")
    return {
        "report": {"report_dir": str(report), "report_md": str(report / "report.md")},
        "cells": [{"artifacts": {"model_dir": str(model)}}],
        "stages": {"stages": 7, "from_cache": 2, "ran": 5, "seconds": 3.0},
    }


def test_a_finished_grid_answers_from_anywhere_it_is_copied(tmp_path):
    out = tmp_path / "out"
    result = _finished_grid(out)
    complete.record(out, "k1", result, f"table\nreport:     {out}/report/report.md\nstages: x")
    summary = complete.completed_summary(out, "k1")
    assert summary.splitlines()[:2] == ["table", f"report:     {out}/report/report.md"]
    assert "7 of 7 from cache, 0 ran" in summary
    assert complete.completed_summary(out, "k2") is None  # another key: the flow runs
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "out")
    assert f"report:     {moved}/report/report.md" in complete.completed_summary(moved, "k1")


@pytest.mark.parametrize(
    "damage",
    [
        "artifact deleted",
        "weights truncated",
        "report edited",
        "stage added",
        "record unreadable",
        "forgotten",
    ],
)
def test_anything_missing_or_changed_sends_the_rerun_to_the_flow(tmp_path, damage):
    out = tmp_path / "out"
    complete.record(out, "k", _finished_grid(out), "summary")
    assert complete.completed_summary(out, "k") is not None
    weights = out / "stages" / "distill" / "abc" / "final" / "model.safetensors"
    if damage == "artifact deleted":
        shutil.rmtree(weights.parent)
    elif damage == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:20])
    elif damage == "report edited":
        (out / "report" / "report.md").write_text("# another grid's report\n")
    elif damage == "stage added":
        (out / "stages" / "compress" / "def").mkdir(parents=True)
        (out / "stages" / "compress" / "def" / "summary.json").write_text("{}")
    elif damage == "record unreadable":
        (out / complete.RECORD).write_text("{not json")
    else:
        complete.forget(out)
    assert complete.completed_summary(out, "k") is None


def test_forget_on_a_fresh_directory_is_harmless(tmp_path):
    complete.forget(tmp_path / "not-yet")
    assert not (tmp_path / "not-yet").exists()
