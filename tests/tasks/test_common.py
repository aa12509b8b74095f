"""Stage plumbing: cache keys follow the code, stage dirs follow the inputs."""

from __future__ import annotations

from pathlib import Path

import tasks.common as common


def test_paths_under_the_output_dir_are_stored_relative(tmp_path):
    ref = {"model_dir": str(tmp_path / "stages" / "distill" / "ab"), "other": "/elsewhere/x"}
    stored = common.relativize({"refs": [ref], "n": 3}, tmp_path)
    assert stored == {
        "refs": [{"model_dir": "@output_dir/stages/distill/ab", "other": "/elsewhere/x"}],
        "n": 3,
    }
    moved = tmp_path / "moved"
    assert common.absolutize(stored, moved)["refs"][0]["model_dir"] == str(
        moved / "stages/distill/ab"
    )


def test_stage_dir_does_not_depend_on_where_the_output_dir_is(tmp_path):
    def ref(root):
        return {"split_dir": str(root / "stages" / "split-corpus" / "x")}

    a = common.stage_dir(tmp_path / "a", "pack-tokens", ref(tmp_path / "a"))
    b = common.stage_dir(tmp_path / "b", "pack-tokens", ref(tmp_path / "b"))
    assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")


def test_stage_dir_follows_the_content_of_a_file_it_reads(tmp_path):
    data = tmp_path / "fv"
    data.mkdir()
    (data / "task.json").write_text("[1]")
    first = common.stage_dir(tmp_path / "out", "evaluate-icl", {"icl": {"data_dir": str(data)}})
    (data / "task.json").write_text("[2]")
    assert (
        common.stage_dir(tmp_path / "out", "evaluate-icl", {"icl": {"data_dir": str(data)}})
        != first
    )


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
