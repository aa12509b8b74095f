"""MLflow tracking of the grid: the one module that imports mlflow.

One parent run per grid run, one child run per teacher x method x budget x seed cell
(and per reference model). Runs are driven through ``MlflowClient`` with explicit run
ids (never the thread-local "active run"), so Prefect's worker threads cannot mix them
up, and every run is ended in a ``finally`` as FINISHED or FAILED: none stays RUNNING.

What a person sees in the MLflow UI is decided here: the experiment is a training
experiment whose artifacts live beside the store under the output directory; a cell's
params are its own resolved config; its metrics are the headline numbers (short names, the
report's units) and the training curves (``tasks.run_metrics``); the per-module alpha/rank
histories are a CSV and a heatmap under ``controller/``; the parent run carries Table 2,
the figures, the report and a shared runs-table view of the grid (:func:`log_report`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bl_core.tracking import FanoutLogger, MetricsLogger
from tasks import run_metrics
from tasks.fingerprints import PROJECT_ROOT
from tasks.progress import ProgressLogger

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
    global _ARTIFACT_ROOT
    _ARTIFACT_ROOT = artifact_root(output_dir, uri)
    return uri


# Where new experiments put their artifacts; set with the tracking URI (process-wide, as
# the URI is). None: the tracking server decides (a remote server has its own store).
_ARTIFACT_ROOT: str | None = None
# MLflow 3 opens an experiment without this tag in its GenAI overview; a training
# experiment opens on the runs table (the value the MLflow UI knows for classic ML).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def artifact_root(output_dir: str | Path, uri: str) -> str | None:
    """``file://<output_dir>/mlartifacts`` for a local store (SQLite or a file path), so
    copying or deleting the output directory takes the artifacts with it. MLflow's own
    default is ``./mlruns`` of the working directory, whatever the store. A remote
    tracking server (http, databricks, ...) keeps its artifact store: None."""
    scheme = urlparse(uri).scheme
    if uri == "databricks" or (scheme not in ("", "file", "sqlite") and len(scheme) > 1):
        return None  # ("C:" is a drive letter: a path)
    return (Path(output_dir).resolve() / "mlartifacts").as_uri()


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
    """The experiment's id, created (training kind, artifacts under the output
    directory) if it does not exist."""
    c = client()
    found = c.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    tags = dict([EXPERIMENT_KIND])
    try:
        return c.create_experiment(name, artifact_location=_ARTIFACT_ROOT, tags=tags)
    except Exception:  # noqa: BLE001 - another worker created it first: use theirs
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def setup_experiment(name: str) -> str:
    """Create or update the grid's experiment; returns its id. An experiment created by
    an older version keeps its artifact location (MLflow cannot move it): warned once."""
    exp_id = experiment_id(name)
    c = client()
    c.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    location = c.get_experiment(exp_id).artifact_location
    if _ARTIFACT_ROOT and location.rstrip("/") != _ARTIFACT_ROOT.rstrip("/"):
        log.warning(
            "MLflow experiment %r stores artifacts at %s, not under the output directory "
            "(%s): it was created before; delete it or set tracking.experiment to a new name",
            name, location, _ARTIFACT_ROOT,
        )  # fmt: skip
    return exp_id


def millis(moment: datetime | float | None) -> int | None:
    """MLflow's timestamps: milliseconds since the epoch (from a datetime or seconds)."""
    if moment is None:
        return None
    seconds = moment.timestamp() if isinstance(moment, datetime) else float(moment)
    return int(seconds * 1000)


def open_run(
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    start_time: int | None = None,
) -> str:
    """Create a run (child of ``parent_run_id`` if given) and return its id.
    ``start_time`` in milliseconds (default now)."""
    c = client()
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(
        experiment_id(experiment), start_time=start_time, tags=all_tags, run_name=run_name
    )
    if params:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            c.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


_DEFERRED_PREFIX = "deferred:"
_DEFERRED: dict[str, dict[str, Any]] = {}  # ref -> open_run arguments, then {"run_id": id}
_DEFERRED_LOCK = threading.Lock()


def defer_run(
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """A reference to a run that is opened when its stage starts (:func:`start_run`),
    not when the stage is queued: stages submitted together (every teacher's
    pretraining) then show their own durations instead of the wait for the slowest."""
    ref = f"{_DEFERRED_PREFIX}{uuid.uuid4().hex}"
    with _DEFERRED_LOCK:
        _DEFERRED[ref] = {
            "experiment": experiment,
            "run_name": run_name,
            "tags": tags,
            "params": params,
            "parent_run_id": parent_run_id,
        }
    return ref


def start_run(run_ref: str, start_time: int | None = None) -> str:
    """The run id behind ``run_ref`` (a run id, or a :func:`defer_run` reference, whose
    run is opened on the first call: in the stage's thread when the stage runs, or by the
    flow with the stage's own timestamp when it came from cache)."""
    if not run_ref.startswith(_DEFERRED_PREFIX):
        return run_ref
    with _DEFERRED_LOCK:
        entry = _DEFERRED[run_ref]
        if "run_id" not in entry:
            entry["run_id"] = open_run(**entry, start_time=start_time)
        return entry["run_id"]


def close_run(
    run_id: str,
    failed: bool,
    error: str | None = None,
    end_time: int | None = None,
    killed: bool = False,
) -> None:
    """End a run FINISHED, FAILED or (stopped by a signal) KILLED (``end_time`` in
    milliseconds, default now)."""
    c = client()
    if error:
        c.set_tag(run_id, "error", error[:5000])
    status = "KILLED" if killed else "FAILED" if failed else "FINISHED"
    c.set_terminated(run_id, status=status, end_time=end_time)


def owner_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later run can tell a dead one's from a live
    one's (:func:`end_stale_runs`)."""
    return {"bl.host": socket.gethostname(), "bl.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs(experiment: str) -> list[str]:
    """Mark KILLED the experiment's RUNNING runs whose process (same host) is gone — a
    SIGKILLed grid leaves its runs RUNNING forever otherwise. Returns their ids."""
    c = client()
    host = socket.gethostname()
    stale = []
    runs = c.search_runs(
        [experiment_id(experiment)],
        filter_string="attributes.status = 'RUNNING'",
        max_results=5000,
    )
    for run in runs:
        tags = run.data.tags
        pid = tags.get("bl.pid", "")
        if tags.get("bl.host") == host and pid.isdigit() and not _alive(int(pid)):
            c.set_tag(run.info.run_id, "error", f"process {pid} on {host} died (killed)")
            c.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    return stale


def kill_running(run_ids: list[str]) -> None:
    """End the still RUNNING ones of ``run_ids`` KILLED (a grid stopped by a signal)."""
    c = client()
    for run_id in run_ids:
        if run_id and not run_id.startswith(_DEFERRED_PREFIX):
            if c.get_run(run_id).info.status == "RUNNING":
                c.set_terminated(run_id, status="KILLED")


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Numbers only; the per-module controller histories go to an artifact instead
    (``run_metrics.is_module_metric``)."""
    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not run_metrics.is_module_metric(key)
    ]
    c = client()
    for start in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[start : start + 1000])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


def log_table(run_id: str, frame: Any, artifact_file: str) -> None:
    """A table the MLflow UI shows as one (``MlflowClient.log_table``), without the pandas 3
    deprecation warning MLflow 3.17's own dtype check prints into every grid's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="For backward compatibility, 'str' dtypes")
        client().log_table(run_id, frame, artifact_file)


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
    run: it is logged as a warning once and training goes on (metrics.jsonl keeps all).
    A deferred run (:func:`defer_run`) is opened here, when its stage starts."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._warned = False
        self._guard(self._start)

    def _start(self) -> None:
        self.run_id = start_run(self.run_id)

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

    def replay(self, records: list[dict[str, Any]]) -> None:
        """A resumed run's earlier steps (from metrics.jsonl), unless this run has them."""
        self._guard(self._replay, records)

    def _replay(self, records: list[dict[str, Any]]) -> None:
        if records and not has_metric(self.run_id, "loss"):
            for record in records:
                record = dict(record)
                log_metrics(self.run_id, record, record.pop("step"))


def tracking_logger(output_dir: str, run_id: str | None, label: str | None = None) -> MetricsLogger:
    """What a training stage reports through: its MLflow run (if any) and a progress line
    per logging interval in the Prefect flow-run logs, named ``label`` (default: after the
    running task, ``distill-<cell>`` -> ``<cell> distill``; a cohort names each cell)."""
    progress = ProgressLogger.for_current_stage(label)
    if not run_id:
        return progress
    return FanoutLogger(MLflowLogger(run_id), progress)


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


def _module_history_files(metrics_path: Path) -> list[Path]:
    """``module_history.csv`` and ``module_history.png`` beside a training log (made once:
    the log of a finished stage never changes), or nothing without per-module entries."""
    csv_path = metrics_path.with_name("module_history.csv")
    png_path = metrics_path.with_name("module_history.png")
    if not (csv_path.is_file() and png_path.is_file()):
        history = run_metrics.module_history(metrics_path)
        if history.empty:
            return []
        from tasks.report_figures import plot_module_history, write_atomic, write_png

        write_atomic(csv_path, history.to_csv(index=False).encode())
        write_png(plot_module_history(history), png_path)
    return [csv_path, png_path]


def record_cell(run_id: str, cell: dict[str, Any], end_time: int | None = None) -> None:
    """Log a cell's metrics and artifacts into its run and end the run (FAILED if the cell
    failed; at ``end_time`` in milliseconds, default now). Training curves are replayed
    from metrics.jsonl when the training stage was served from cache and so never
    streamed them; the per-module controller histories become ``controller/`` files."""
    failed = cell.get("status") != "ok"
    killed = cell.get("status") == "killed"
    try:
        log_metrics(run_id, run_metrics.headline_metrics(cell))
        details = run_metrics.detail_table(cell)
        if len(details):
            log_table(run_id, details, "details.json")
        artifacts = cell.get("artifacts") or {}
        if artifacts.get("metrics_path") and not has_metric(run_id, "loss"):
            replay_metrics(run_id, artifacts["metrics_path"])
        if artifacts.get("metrics_path") and Path(artifacts["metrics_path"]).is_file():
            for path in _module_history_files(Path(artifacts["metrics_path"])):
                log_artifact(run_id, path, "controller")
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
        close_run(run_id, failed, cell.get("error"), end_time, killed=killed)


def share_grid_view(parent_run_id: str) -> str:
    """Save an MLflow "shared view" of this grid's cells (grouped by teacher, the headline
    metrics as columns) on the experiment; returns its share key. The UI otherwise opens
    on no metric columns at all, and in 3.x on its GenAI pages unless the link says
    ``workflowType=machine_learning``."""
    c = client()
    parent = c.get_run(parent_run_id)
    grid_id = parent.data.tags.get("grid_id", parent_run_id)
    state = run_metrics.grid_view_state(grid_id)
    key = f"grid-{grid_id[:8]}"
    exp_id = parent.info.experiment_id
    c.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return key


def ui_url(parent_run_id: str, share_key: str | None = None) -> str:
    """Where the MLflow UI shows this grid: the tracking server itself, or ``mlflow ui``'s
    default address for a local store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    exp_id = client().get_run(parent_run_id).info.experiment_id
    query = "workflowType=machine_learning" + (
        f"&viewStateShareKey={share_key}" if share_key else ""
    )
    return f"{base}/#/experiments/{exp_id}/runs?{query}"


def log_report(parent_run_id: str, files: dict[str, str], table2: Any) -> str:
    """The grid's answer on the parent run's own page: Table 2 as the run's description
    (its overview) and as an MLflow table (``table2.json``), the figures under
    ``figures/``, every report file under ``report/``; and a shared runs-table view of the
    grid's cells. ``table2`` is the formatted frame (strings). Returns the view's URL."""
    from tasks.report_tables import markdown_table

    c = client()
    key = share_grid_view(parent_run_id)
    url = ui_url(parent_run_id, key)
    figures = {name: path for name, path in files.items() if name.endswith(".png")}
    note = [
        f"**Which budget?** {run_metrics.budget_line(table2)}",
        "",
        f"[The grid's cells side by side]({url}) · Table 2 as `table2.json`, figures under "
        "`figures/`, the whole report under `report/` (Artifacts)",
        "",
        markdown_table(table2),
    ]
    c.set_tag(parent_run_id, "mlflow.note.content", "\n".join(note))
    log_table(parent_run_id, table2.reset_index(), "table2.json")
    for path in files.values():
        log_artifact(parent_run_id, path, "report")
    for path in figures.values():
        log_artifact(parent_run_id, path, "figures")
    return url
