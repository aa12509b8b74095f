"""MLflow bookkeeping: a failed cell's run ends FAILED, nothing stays RUNNING."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from tasks import tracking


def test_flatten_config():
    flat = tracking.flatten({"budget": {"final_fraction": 0.4}, "lora": {"targets": ["q"]}})
    assert flat == {"budget.final_fraction": "0.4", "lora.targets": '["q"]'}


def test_record_cell_logs_and_closes(tmp_path):
    uri = tracking.set_tracking_uri(tmp_path, None)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    parent = tracking.open_run("exp", "grid", {"kind": "grid"}, {"a": {"b": 1}})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 3.0 - s}) for s in (1, 2)))
    ok = tracking.open_run("exp", "ok", {"kind": "cell"}, None, parent)
    tracking.record_cell(
        ok,
        {
            "status": "ok",
            "ppl": 12.5,
            "train": {"tokens_per_s": 10.0},
            "icl": {"composite": {"mean": 0.25}, "tasks": {"capitalize": {"mean": 0.5}}},
            "artifacts": {"metrics_path": str(metrics)},
        },
    )
    bad = tracking.open_run("exp", "bad", {"kind": "cell"}, None, parent)
    tracking.record_cell(bad, {"status": "failed", "error": "evaluate-icl: Failed: boom"})
    tracking.close_run(parent, failed=True)
    client = MlflowClient(uri)
    ok_run, bad_run = client.get_run(ok), client.get_run(bad)
    assert ok_run.info.status == "FINISHED" and bad_run.info.status == "FAILED"
    assert ok_run.data.metrics["ppl"] == 12.5 and ok_run.data.metrics["icl/capitalize"] == 0.5
    assert [m.value for m in client.get_metric_history(ok, "loss")] == [2.0, 1.0]
    assert bad_run.data.tags["error"] == "evaluate-icl: Failed: boom"
    assert ok_run.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.params["a.b"] == "1"


def test_uri_precedence_config_then_user_environment_then_output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.set_tracking_uri(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    assert tracking.set_tracking_uri(tmp_path, None) == "http://127.0.0.1:5000"
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", None)
    assert tracking.set_tracking_uri(tmp_path, None).endswith(f"{tmp_path.name}/mlflow.db")
