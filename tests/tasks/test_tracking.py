"""MLflow bookkeeping: a failed cell's run ends FAILED, nothing stays RUNNING; artifacts live
under the output directory; a run shows its stage's own times and the metrics a person
compares, with the per-module histories and the details as files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks import tracking


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("out")  # one store: creating its tables takes seconds


@pytest.fixture
def store(store_dir, tmp_path, monkeypatch, request):
    """The module's store, run from another working directory; an experiment per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", None)
    client = MlflowClient(tracking.set_tracking_uri(store_dir, None))
    return store_dir, client, request.node.name


def test_flatten_config():
    flat = tracking.flatten({"budget": {"final_fraction": 0.4}, "lora": {"targets": ["q"]}})
    assert flat == {"budget.final_fraction": "0.4", "lora.targets": '["q"]'}


def test_record_cell_logs_and_closes(store):
    out, client, exp = store
    parent = tracking.open_run(exp, "grid", {"kind": "grid"}, {"a": {"b": 1}})
    metrics = out / "metrics.jsonl"
    lines = [{"step": s, "loss": 3.0 - s, "alpha/L0.q_proj": 1.0 / s} for s in (1, 2)]
    metrics.write_text("\n".join(json.dumps(line) for line in lines))
    ok = tracking.open_run(exp, "ok", {"kind": "cell"}, None, parent)
    tracking.record_cell(
        ok,
        {
            "status": "ok",
            "teacher": "t",
            "method": "kd_lora",
            "ppl": 12.5,
            "train": {"tokens_per_s": 10.0},
            "icl": {"composite": {"mean": 0.25}, "tasks": {"capitalize": {"mean": 0.5}}},
            "artifacts": {"metrics_path": str(metrics)},
        },
    )
    bad = tracking.open_run(exp, "bad", {"kind": "cell"}, None, parent)
    tracking.record_cell(bad, {"status": "failed", "error": "evaluate-icl: Failed: boom"})
    tracking.close_run(parent, failed=True)
    ok_run, bad_run = client.get_run(ok), client.get_run(bad)
    assert ok_run.info.status == "FINISHED" and bad_run.info.status == "FAILED"
    assert ok_run.data.metrics["ppl"] == 12.5 and ok_run.data.metrics["icl_composite"] == 25.0
    assert not any(key.startswith(("alpha/", "icl/", "train/")) for key in ok_run.data.metrics)
    assert [m.value for m in client.get_metric_history(ok, "loss")] == [2.0, 1.0]
    files = {a.path for a in client.list_artifacts(ok)} | {
        a.path for a in client.list_artifacts(ok, "controller")
    }
    assert {"details.json", "controller/module_history.csv", "controller/module_history.png"} <= (
        files
    )
    details = json.loads(Path(client.download_artifacts(ok, "details.json", str(out))).read_text())
    assert ["icl %", "capitalize", 50.0] in details["data"]
    assert bad_run.data.tags["error"] == "evaluate-icl: Failed: boom"
    assert ok_run.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.params["a.b"] == "1"


def test_artifacts_live_under_the_output_dir_not_the_working_dir(store, tmp_path):
    out, client, exp = store
    exp_id = tracking.setup_experiment(exp)
    experiment = client.get_experiment(exp_id)
    assert experiment.artifact_location == (out / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run = tracking.open_run(exp, "r", {})
    (tmp_path / "note.txt").write_text("x")
    tracking.log_artifact(run, tmp_path / "note.txt", "files")
    assert (out / "mlartifacts" / run / "artifacts" / "files" / "note.txt").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_a_remote_tracking_server_keeps_its_artifact_store(tmp_path):
    assert tracking.artifact_root(tmp_path, "http://127.0.0.1:5000") is None
    assert tracking.artifact_root(tmp_path, "databricks://profile") is None
    assert tracking.artifact_root(tmp_path, "sqlite:///x.db") == (tmp_path / "mlartifacts").as_uri()


def test_a_deferred_run_starts_when_its_stage_starts(store):
    _, client, exp = store
    ref = tracking.defer_run(exp, "pretrain/t", {"kind": "pretrain"}, {"a": 1})
    assert not client.search_runs([tracking.experiment_id(exp)])  # nothing opened yet
    logger = tracking.MLflowLogger(ref)  # what the stage does when it runs
    run_id = logger.run_id
    assert tracking.start_run(ref) == run_id and client.get_run(run_id).data.params["a"] == "1"
    tracking.close_run(run_id, failed=False)


def test_a_cached_stage_gets_its_own_timestamps(store):
    _, client, exp = store
    ref = tracking.defer_run(exp, "pretrain/t", {"kind": "pretrain"})
    run_id = tracking.start_run(ref, start_time=1_000_000)  # the stage never ran here
    tracking.record_cell(run_id, {"status": "ok", "train": {}}, end_time=1_000_000)
    info = client.get_run(run_id).info
    assert (info.start_time, info.end_time) == (1_000_000, 1_000_000)


def test_the_parent_run_answers_which_budget(store, tmp_path):
    import pandas as pd

    _, client, exp = store
    parent = tracking.open_run(exp, "grid", {"kind": "grid", "grid_id": "abcdef12-34"})
    figure = tmp_path / "pareto.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    table = pd.DataFrame(
        {"PPL t": ["20.00", "24.60"], "MAC ×": ["1.00×", "4.05×"]},
        index=pd.Index(["KD LoRA", "Budgeted F=0.0"], name="Method"),
    )
    url = tracking.log_report(parent, {"pareto.png": str(figure)}, table)
    run = client.get_run(parent)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**Which budget?** F=0.0: 4.05× by MACs, PPL 24.60; KD LoRA: PPL 20.00")
    assert "| KD LoRA | 20.00 | 1.00× |" in note
    assert {a.path for a in client.list_artifacts(parent)} >= {"figures", "report", "table2.json"}
    assert url.endswith("runs?workflowType=machine_learning&viewStateShareKey=grid-abcdef12")
    view = client.get_experiment(run.info.experiment_id).tags[
        "mlflow.sharedViewState.grid-abcdef12"
    ]
    assert "metrics.`speedup_mac`" in json.loads(view)["selectedColumns"]


def test_uri_precedence_config_then_user_environment_then_output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.set_tracking_uri(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    assert tracking.set_tracking_uri(tmp_path, None) == "http://127.0.0.1:5000"
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", None)
    assert tracking.set_tracking_uri(tmp_path, None).endswith(f"{tmp_path.name}/mlflow.db")
