"""The full grid on the micro preset, walked through the situations users hit:
a failing stage, the rerun, an unchanged rerun, a changed budget, a forced stage; and what
a person then sees in MLflow and Prefect."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.context import TaskRunContext

import tasks.icl
from tasks.common import read_executions

pytestmark = pytest.mark.slow

FAULTY = "micro-s/budgeted-F0.00/s0"
TRAINING_AND_EVAL = {
    "prepare-teacher",
    "build-student",
    "distill-cohort",
    "distill",
    "compress",
    "evaluate-perplexity",
    "evaluate-icl",
    "measure-speed",
}
# Keep the test quick: no retry delay, fewer ICL items.
OVERRIDES = {"pipeline.retries": 0, "icl.items_per_task": 3}


def _run(out: Path, **kwargs):
    from flows.grid import full_grid

    before = len(read_executions(out))
    state = full_grid(
        config="micro", output_dir=str(out), overrides=OVERRIDES, return_state=True, **kwargs
    )
    executed = read_executions(out)[before:]
    return state, Counter((e["stage"], e["label"]) for e in executed)


def _mlflow_runs(out: Path):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("budgeted-lora-micro")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The directory the grid runs from, apart from its output directory: nothing of the
    grid may land here (MLflow's default ./mlruns did)."""
    path = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        yield path


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, prefect_harness, workdir):
    return tmp_path_factory.mktemp("grid")


def test_1_failed_stage_fails_only_its_cell(grid_dir, workdir, monkeypatch):
    real = tasks.icl.run_icl_suite

    def faulty(*args, **kwargs):
        if FAULTY in TaskRunContext.get().task_run.name:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.icl, "run_icl_suite", faulty)
    state, executed = _run(grid_dir)
    assert state.is_failed() and FAULTY in state.message
    assert ("distill", "micro-m/budgeted-F0.40/s0") in executed  # the grid went on
    # DESIGN §6a: each teacher's cells trained in one lockstep cohort (one teacher forward
    # per batch), whose runs each cell's distill stage then found finished
    assert executed[("distill-cohort", "micro-s")] == executed[("distill-cohort", "micro-m")] == 1
    assert not any(
        p.name.startswith(".") and p.name.endswith(".tmp") for p in (grid_dir / "stages").rglob("*")
    )  # nothing half-written
    _, runs = _mlflow_runs(grid_dir)
    status = {r.info.run_name: r.info.status for r in runs}
    assert status[FAULTY] == "FAILED"
    assert "RUNNING" not in status.values()
    assert [r.info.status for r in runs if r.data.tags.get("kind") == "grid"] == ["FAILED"]
    assert list(workdir.iterdir()) == []  # no mlruns/ (or anything else) in the working dir
    assert (grid_dir / "mlartifacts").is_dir()


def test_2_rerun_recomputes_only_the_failed_stage_and_downstream(grid_dir):
    state, executed = _run(grid_dir)
    assert state.is_completed(), state.message
    assert set(executed) == {("evaluate-icl", FAULTY), ("aggregate-report", "report")}


def test_3_tables_have_every_cell_filled(grid_dir):
    report = grid_dir / "report"
    t2 = pd.read_csv(report / "table2.csv", index_col=0)
    trained = ["KD Full", "KD LoRA", "Budgeted F=0.4", "Budgeted F=0.0"]
    assert set(trained) <= set(t2.index)
    assert (
        not t2.loc[trained, ["PPL micro-s", "PPL micro-m", "Train compute", "Infer speedup (MAC)"]]
        .isna()
        .any()
        .any()
    )
    assert t2.loc["Budgeted F=0.0", "Realised F"] == 0.0
    t8 = pd.read_csv(report / "table8.csv", index_col=0)
    assert t8.loc["Budgeted F=0.0", "Dense dropped"] == 7
    t9 = pd.read_csv(report / "table9.csv", index_col=0)
    assert "Composite" in t9.index and not t9.isna().any().any()
    for figure in ("pareto.png", "icl_composite.png", "trajectory.png"):
        assert (report / figure).stat().st_size > 1000


def test_4_mlflow_parent_and_one_child_per_cell(grid_dir):
    client, runs = _mlflow_runs(grid_dir)
    experiment = client.get_experiment_by_name("budgeted-lora-micro")
    assert experiment.artifact_location == (grid_dir / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id]
    cells = [r for r in children if r.data.tags.get("kind") == "cell"]
    assert len(cells) == 2 * 4  # 2 teachers x (kd_full, kd_lora, budgeted F=0, F=0.4)
    for run in cells:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert {"teacher", "method", "final_fraction", "preset", "grid_id", "git_commit"} <= set(
            tags
        )
        assert {"ppl", "icl_composite", "speedup_mac", "param_reduction", "train_compute"} <= set(
            metrics
        )
        assert not [key for key in metrics if key.startswith(("alpha/", "rank/"))]
        assert params["cell.teacher"] == f'"{tags["teacher"]}"'
        assert client.get_metric_history(run.info.run_id, "loss")  # the training curve
        if tags["method"] == "budgeted":
            assert params["budget.final_fraction"] == tags["final_fraction"]  # its own F
            assert {"speedup_measured", "realised_fraction"} <= set(metrics)
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "compressed")}
            assert artifacts == {"compressed/bl_manifest.json", "compressed/structure.csv"}
            controller = {a.path for a in client.list_artifacts(run.info.run_id, "controller")}
            assert "controller/module_history.png" in controller
    zero = [r for r in cells if r.data.tags["final_fraction"] == "0.0"]
    assert [r.data.params["budget.final_fraction"] for r in zero] == ["0.0", "0.0"]
    assert all(r.info.status != "RUNNING" for r in runs)
    first = min(parents, key=lambda r: r.info.start_time).info.run_id

    def pretrain_seconds(parent_id: str) -> list[float]:
        return [
            (r.info.end_time - r.info.start_time) / 1000
            for r in runs
            if r.data.tags.get("kind") == "pretrain"
            and r.data.tags.get("mlflow.parentRunId") == parent_id
        ]

    trained = pretrain_seconds(first)  # each its own stage's time, not the wait for both
    assert len(trained) == 2 and len(set(trained)) == 2 and min(trained) > 0
    assert pretrain_seconds(latest.info.run_id) == [0, 0]  # from cache, as Prefect says
    parent_files = {a.path for a in client.list_artifacts(latest.info.run_id)}
    assert {"figures", "report", "table2.json"} <= parent_files
    assert "Which budget?" in latest.data.tags["mlflow.note.content"]


def test_4b_prefect_report_renders_its_figures(grid_dir):
    markdown = Artifact.get("grid-report").data
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 3
    assert all(link.startswith("data:image/png;base64,") for link in links)  # no relative link
    data = Artifact.get("table-2").data  # rows, as JSON text
    table = json.loads(data) if isinstance(data, str) else data
    assert table[0]["Method"] == "Teacher" and re.fullmatch(r"\d+\.\d\d", table[0]["PPL micro-s"])


def test_5_unchanged_rerun_trains_and_evaluates_nothing(grid_dir):
    state, executed = _run(grid_dir)
    assert state.is_completed()
    assert not executed  # not even the report: its inputs did not change
    stages = state.result()["stages"]
    assert stages["from_cache"] == stages["stages"] > 40 and stages["ran"] == 0


def test_6_changing_one_budget_reruns_only_its_branch(grid_dir):
    state, executed = _run(grid_dir, budgets=[0.0, 0.2])
    assert state.is_completed(), state.message
    stages = {stage for stage, _ in executed} - {"aggregate-report"}
    assert stages == {
        "distill-cohort",
        "distill",
        "compress",
        "evaluate-perplexity",
        "evaluate-icl",
        "measure-speed",
    }
    assert {label for stage, label in executed if stage != "distill-cohort"} - {"report"} == {
        "micro-s/budgeted-F0.20/s0",
        "micro-m/budgeted-F0.20/s0",
    }


def test_7_force_recomputes_one_stage(grid_dir):
    state, executed = _run(grid_dir, force=["evaluate-perplexity"])
    assert state.is_completed()
    # The same perplexities again: the report is rewritten only if a number changed.
    assert {stage for stage, _ in executed} - {"aggregate-report"} == {"evaluate-perplexity"}
    assert sum(1 for stage, _ in executed if stage == "evaluate-perplexity") == 2 + 1 + 8


def test_8_online_teacher_outputs_give_the_same_students(grid_dir, tmp_path):
    """The lockstep cohort (kd.teacher_outputs: shared, exact) is the online path with the
    teacher's work shared: every cell's weights, and so its perplexity, are identical."""
    from flows.grid import full_grid

    state = full_grid(
        config="micro",
        output_dir=str(tmp_path),
        overrides=OVERRIDES | {"kd.teacher_outputs": "online"},
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert not any(e["stage"] == "distill-cohort" for e in read_executions(tmp_path))

    def cells(out: Path) -> dict:
        import json

        found = json.loads((out / "report" / "cells.json").read_text())
        return {c["label"]: c for c in found if c["method"] in ("kd_full", "kd_lora", "budgeted")}

    shared, online = cells(grid_dir), cells(tmp_path)
    assert shared.keys() == online.keys() and len(shared) == 8
    for label, cell in shared.items():
        assert cell["ppl"] == online[label]["ppl"], label
        assert cell["train"]["teacher_outputs"] == "shared (exact, lockstep cohort)"
        assert online[label]["train"]["teacher_outputs"] == "online"


def test_9_a_sparse_store_is_written_once_per_teacher(tmp_path):
    from flows.grid import full_grid

    overrides = OVERRIDES | {"kd.teacher_top_k": 16}
    kwargs = {"config": "micro", "output_dir": str(tmp_path), "methods": ["kd_lora", "budgeted"]}
    state = full_grid(overrides=overrides, budgets=[0.0], return_state=True, **kwargs)
    assert state.is_completed(), state.message
    stores = Counter(
        e["label"] for e in read_executions(tmp_path) if e["stage"] == "teacher-outputs"
    )
    assert stores == {"micro-s": 1, "micro-m": 1}
    before = len(read_executions(tmp_path))
    # a second budget reads the same store: nothing of the first cells is redone
    state = full_grid(overrides=overrides, budgets=[0.0, 0.4], return_state=True, **kwargs)
    assert state.is_completed(), state.message
    again = [(e["stage"], e["label"]) for e in read_executions(tmp_path)[before:]]
    assert {label for stage, label in again if stage == "distill"} == {
        "micro-s/budgeted-F0.40/s0",
        "micro-m/budgeted-F0.40/s0",
    }
