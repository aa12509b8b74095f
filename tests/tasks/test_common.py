"""Stage plumbing: cache keys follow the code, stage dirs follow the inputs."""

from __future__ import annotations

from pathlib import Path

import tasks.common as common


def test_project_hash_changes_when_a_helper_changes(tmp_path, monkeypatch):
    for folder in ("bl_core", "tasks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(common, "PROJECT_ROOT", tmp_path)
    common.project_source_hash.cache_clear()
    before = common.project_source_hash()
    (tmp_path / "bl_core" / "a.py").write_text("x = 2\n")  # a helper, not the task itself
    common.project_source_hash.cache_clear()
    after = common.project_source_hash()
    common.project_source_hash.cache_clear()
    assert before != after


def test_stage_dir_is_a_function_of_inputs(tmp_path):
    a = common.stage_dir(tmp_path, "distill", {"method": "kd_lora", "rank": 8})
    b = common.stage_dir(tmp_path, "distill", {"rank": 8, "method": "kd_lora"})
    c = common.stage_dir(tmp_path, "distill", {"method": "kd_lora", "rank": 16})
    assert a == b != c
    assert a.parent == Path(tmp_path) / "stages" / "distill"


def test_cell_label():
    assert common.cell_label("tiny-s", "budgeted", 0.4, 0) == "tiny-s/budgeted-F0.40/s0"
    assert common.cell_label("tiny-s", "kd_full", None, 1) == "tiny-s/kd_full/s1"


def test_model_fingerprint_changes_with_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = common.model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert common.model_fingerprint(tmp_path) != first


def test_executions_log_round_trip(tmp_path):
    common.record_execution(tmp_path, "distill", "x")
    common.record_execution(tmp_path, "compress", "x")
    assert [e["stage"] for e in common.read_executions(tmp_path)] == ["distill", "compress"]
