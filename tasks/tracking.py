"""MLflow tracking of the grid: the one module that imports mlflow.

One parent run per grid run, one child run per teacher x method x budget x seed cell
(and per reference model). Runs are driven through ``MlflowClient`` with explicit run
ids (never the thread-local "active run"), so Prefect's worker threads cannot mix them
up, and every run is ended in a ``finally`` as FINISHED or FAILED: none stays RUNNING.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bl_core.tracking import MetricsLogger, NullLogger
from tasks.common import PROJECT_ROOT

log = logging.getLogger(__name__)
_MAX_PARAM_LENGTH = 6000
# What the user (or a worker's environment) set, read once: set_tracking_uri() itself
# writes MLFLOW_TRACKING_URI for subprocesses and must not mistake that for a choice.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def default_tracking_uri(output_dir: str | Path) -> str:
    """MLflow's own default is ``sqlite:///mlflow.db`` relative to the cwd: never use it."""
    return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db')}"


def set_tracking_uri(output_dir: str | Path, uri: str | None) -> str:
    """Point this process (and subprocesses) at the grid's store; returns the URI.
    Precedence: ``tracking.uri`` in the config, then ``MLFLOW_TRACKING_URI`` from the
    environment (a worker's setting), then a SQLite store under the output directory."""
    uri = uri or _USER_TRACKING_URI or default_tracking_uri(output_dir)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))


def git_commit() -> str:
    """The project's commit; images without .git set ``BL_GIT_COMMIT`` at build time."""
    if os.environ.get("BL_GIT_COMMIT"):
        return os.environ["BL_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"budget.final_fraction": "0.4", ...}`` for MLflow params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            out[name] = json.dumps(value)[:_MAX_PARAM_LENGTH]
    return out


def experiment_id(name: str) -> str:
    c = client()
    found = c.get_experiment_by_name(name)
    return found.experiment_id if found else c.create_experiment(name)


def open_run(
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (child of ``parent_run_id`` if given) and return its id."""
    c = client()
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(experiment), tags=all_tags, run_name=run_name)
    if params:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            c.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


def close_run(run_id: str, failed: bool, error: str | None = None) -> None:
    c = client()
    if error:
        c.set_tag(run_id, "error", error[:5000])
    c.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    c = client()
    for start in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[start : start + 1000])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


def has_metric(run_id: str, key: str) -> bool:
    return bool(client().get_metric_history(run_id, key))


def replay_metrics(run_id: str, metrics_jsonl: str | Path) -> int:
    """Log a training run's ``metrics.jsonl`` into a run (for stages served from cache)."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return 0
    count = 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            step = record.pop("step")
            log_metrics(run_id, record, step)
            count += 1
    return count


class MLflowLogger:
    """Live training metrics into a run. A tracking outage must not kill a long training
    run: it is logged as a warning once and training goes on (metrics.jsonl keeps all)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._warned = False

    def _guard(self, fn, *args) -> None:  # noqa: ANN001
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - tracking is best effort, reported once
            if not self._warned:
                log.warning("MLflow logging to run %s failed (%s); continuing", self.run_id, err)
                self._warned = True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._guard(log_metrics, self.run_id, metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self._guard(set_tags, self.run_id, {f"train.{k}": v for k, v in params.items()})


def tracking_logger(output_dir: str, run_id: str | None) -> MetricsLogger:
    return MLflowLogger(run_id) if run_id else NullLogger()


def _cell_metrics(cell: dict[str, Any]) -> dict[str, float]:
    """The numbers of one cell, named for the MLflow UI's comparison view."""
    metrics: dict[str, float] = {}
    if cell.get("ppl") is not None:
        metrics["ppl"] = cell["ppl"]
    icl = cell.get("icl") or {}
    if icl:
        metrics["icl_composite"] = icl["composite"]["mean"]
        metrics |= {f"icl/{task}": v["mean"] for task, v in icl.get("tasks", {}).items()}
    for key in (
        "train_compute_proxy",
        "tokens_per_s",
        "student_tokens_per_s",
        "wall_clock_s",
        "realised_fraction",
        "mean_retention_measured",
        "num_removed",
    ):
        if key in (cell.get("train") or {}):
            metrics[f"train/{key}" if key != "train_compute_proxy" else key] = cell["train"][key]
    for key, value in (cell.get("compression") or {}).items():
        metrics[f"compression/{key}"] = value
    for key, value in (cell.get("speed") or {}).items():
        metrics[f"speed/{key}"] = value
    return metrics


def _structure_csv(manifest_path: str, out_path: Path) -> Path:
    """Per-module compressed structure (name, form, rank, shapes, alpha) as CSV."""
    import csv

    modules = json.loads(Path(manifest_path).read_text())["modules"]
    with out_path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["name", "form", "rank", "d_in", "d_out", "alpha"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(modules)
    return out_path


def record_cell(run_id: str, cell: dict[str, Any]) -> None:
    """Log a cell's metrics and artifacts into its run and end the run (FAILED if the cell
    failed). Training curves are replayed from metrics.jsonl when the training stage was
    served from cache and so never streamed them."""
    failed = cell.get("status") != "ok"
    try:
        log_metrics(run_id, _cell_metrics(cell))
        artifacts = cell.get("artifacts") or {}
        if artifacts.get("metrics_path") and not has_metric(run_id, "loss"):
            replay_metrics(run_id, artifacts["metrics_path"])
        if artifacts.get("manifest_path"):
            manifest = Path(artifacts["manifest_path"])
            log_artifact(run_id, manifest, "compressed")
            structure = manifest.parent / "structure.csv"
            if not structure.is_file():
                _structure_csv(str(manifest), structure)
            log_artifact(run_id, structure, "compressed")
        if cell.get("trajectory"):
            path = Path(artifacts.get("run_dir") or ".") / "trajectory.json"
            if path.is_file():
                log_artifact(run_id, path, "controller")
    finally:
        close_run(run_id, failed=failed, error=cell.get("error"))
