"""Which code and files key which stage (tasks/fingerprints.py): the static import closure
pins the examples the end-to-end reruns (tests/flows/test_reruns.py) show."""

from __future__ import annotations

import json

import pytest

from tasks import fingerprints
from tasks.fingerprints import module_closure, read_files_fingerprint

STAGE_MODULES = {
    "split-corpus": "tasks.corpus",
    "prepare-tokenizer": "tasks.packing",
    "pack-tokens": "tasks.packing",
    "prepare-teacher": "tasks.teachers",
    "build-student": "tasks.students",
    "teacher-outputs": "tasks.teacher_outputs",
    "distill": "tasks.distill",
    "compress": "tasks.compress",
    "evaluate-perplexity": "tasks.perplexity",
    "evaluate-icl": "tasks.icl",
    "measure-speed": "tasks.speed",
    "aggregate-report": "tasks.aggregate",
}


def _stages_using(module: str) -> set[str]:
    return {stage for stage, task in STAGE_MODULES.items() if module in module_closure(task)}


def test_report_code_keys_only_the_report():
    assert _stages_using("tasks.report_tables") == {"aggregate-report"}
    assert _stages_using("tasks.report_figures") == {"aggregate-report"}


@pytest.mark.parametrize("module", ["bl_core.icl", "bl_core.probes"])
def test_icl_code_keys_only_the_icl_evaluation(module):
    assert _stages_using(module) == {"evaluate-icl"}


def test_gated_modules_key_model_stages_not_data_stages():
    using = _stages_using("bl_core.modules")
    assert using >= {"build-student", "distill", "compress", "evaluate-perplexity"}
    assert using >= {"evaluate-icl", "measure-speed"}
    assert not using & {"split-corpus", "prepare-tokenizer", "pack-tokens", "aggregate-report"}


def test_function_level_imports_count_and_observers_do_not():
    assert "bl_core.cohort" in module_closure("tasks.distill")  # imported inside a function
    assert "tasks.tracking" not in module_closure("tasks.distill")  # MLflow only reports
    assert "tasks.run_metrics" not in module_closure("tasks.distill")


def test_code_fingerprint_follows_the_closure(tmp_path, monkeypatch):
    for folder in ("bl_core", "tasks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "tasks" / "stage.py").write_text("def run():\n    from bl_core import a\n")
    (tmp_path / "bl_core" / "a.py").write_text("x = 1\n")
    (tmp_path / "bl_core" / "b.py").write_text("y = 1\n")
    monkeypatch.setattr(fingerprints, "PROJECT_ROOT", tmp_path)

    def key():
        fingerprints.module_closure.cache_clear()
        fingerprints.code_fingerprint.cache_clear()
        return fingerprints.code_fingerprint("tasks.stage")

    try:
        before = key()
        (tmp_path / "bl_core" / "b.py").write_text("y = 2\n")  # not imported: same key
        assert key() == before
        (tmp_path / "bl_core" / "a.py").write_text("x = 2\n")
        assert key() != before
    finally:
        fingerprints.module_closure.cache_clear()
        fingerprints.code_fingerprint.cache_clear()


def test_read_files_are_keyed_by_content_not_artifacts(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"text": "a"}\n')
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    section = {"corpus": {"path": str(corpus)}, "model": {"path": str(out / "stages")}}
    first = read_files_fingerprint(section, out)
    assert list(first) == [str(corpus)]  # the stage artifact is keyed by its fingerprint
    corpus.write_text('{"text": "b"}\n')
    assert read_files_fingerprint(section, out) != first
    assert read_files_fingerprint({"teacher": {"path": "org/hub-model"}}) == {}


def test_a_corpus_glob_is_keyed_by_the_files_it_matches(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    section = {"corpus": {"path": str(tmp_path / "*.jsonl")}}
    first = read_files_fingerprint(section)
    (tmp_path / "b.jsonl").write_text('{"text": "b"}\n')
    assert read_files_fingerprint(section) != first


def test_cutting_a_local_corpus_resplits_it(tmp_path):
    """The reported bug: a JSONL corpus cut from 600 to 200 documents kept its old split."""
    from bl_core.config import config_from_dict
    from tasks.corpus import split_corpus_task

    corpus_path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document number {i} " * 8}) for i in range(600)]
    corpus_path.write_text("\n".join(lines) + "\n")
    corpus = config_from_dict({"corpus": {"source": "jsonl", "path": str(corpus_path)}})
    section = corpus.corpus.model_dump(mode="json")
    (tmp_path / "out").mkdir()
    first = split_corpus_task.fn(str(tmp_path / "out"), section)
    corpus_path.write_text("\n".join(lines[:200]) + "\n")
    second = split_corpus_task.fn(str(tmp_path / "out"), section)
    assert first["num_train_documents"] + first["num_eval_documents"] == 600
    assert second["num_train_documents"] + second["num_eval_documents"] == 200
