"""Reruns that survive code fixes (tasks/fingerprints.py, tasks/common.py): the project's
code is copied to a temporary tree, one file is edited, and the micro grid is rerun from
(a copy of) the same store; executions.jsonl says exactly which stages executed.

One baseline grid is shared by the module; each test reruns on its own copies of the code
and the store, through ``bl grid`` in a subprocess (the edited code must be imported fresh)
against the session's Prefect server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_env import user_env

from tasks.common import read_executions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CODE = ("bl_core", "tasks", "flows")
DATA_STAGES = {"split-corpus", "prepare-tokenizer", "pack-tokens"}
MODEL_STAGES = {"build-student", "distill", "compress", "evaluate-perplexity", "evaluate-icl"}


def _copy_code(dest: Path) -> Path:
    for name in CODE:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def grid_command(store: Path, fv_dir: Path, *extra: str) -> list[str]:
    """One teacher, one Budgeted cell, three ICL tasks read from ``fv_dir``."""
    return [
        *(sys.executable, "-m", "flows.cli", "grid", "--config", "micro", "--out", str(store)),
        *("--teachers", "micro-s", "--methods", "budgeted", "--budgets", "0.0"),
        *("--set", "icl.items_per_task=2", "--set", "pipeline.retries=0"),
        *("--set", f"icl.data_dir={fv_dir}", "--set", "icl.tasks=[capitalize,next_item]"),
        *extra,
    ]


def run_bl(code: Path, command: list[str], api_url: str | None) -> subprocess.CompletedProcess:
    env = user_env(PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def api_url(prefect_harness) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, api_url):
    """Code tree, ICL data and the store of one finished micro grid."""
    root = tmp_path_factory.mktemp("baseline")
    code = _copy_code(root / "code")
    fv_dir = shutil.copytree(ROOT / "tests" / "fixtures" / "fv", root / "fv")
    store = root / "store"
    run_bl(code, grid_command(store, fv_dir), api_url)
    assert {e["stage"] for e in read_executions(store)} >= DATA_STAGES | MODEL_STAGES
    return code, fv_dir, store


def _rerun(tmp_path: Path, baseline, edit, api_url: str | None) -> list[str]:
    code = shutil.copytree(baseline[0], tmp_path / "code")
    # the store's keys name the baseline's ICL data dir: edit that one in a copy of its own
    store = shutil.copytree(baseline[2], tmp_path / "store")
    fv_dir = edit(code)
    before = len(read_executions(store))
    run_bl(code, grid_command(store, fv_dir or baseline[1]), api_url)
    return [e["stage"] for e in read_executions(store)[before:]]


def _append(path: Path, text: str = "\n# an edit that changes no behaviour\n") -> None:
    path.write_text(path.read_text() + text)


def test_editing_report_code_reruns_only_the_report(tmp_path, baseline, api_url):
    stages = _rerun(tmp_path, baseline, lambda c: _append(c / "tasks/report_tables.py"), api_url)
    assert set(stages) == {"aggregate-report"}


def test_editing_the_icl_evaluator_reruns_only_icl_and_report(tmp_path, baseline, api_url):
    # bl_core/probes.py keys the same stages (tests/tasks/test_fingerprints.py)
    stages = _rerun(tmp_path, baseline, lambda c: _append(c / "bl_core/icl.py"), api_url)
    # the report reruns only if the ICL numbers changed (a comment changes none)
    assert set(stages) - {"aggregate-report"} == {"evaluate-icl"}
    assert stages.count("evaluate-icl") == 3  # the teacher, the warm start, the cell


def test_editing_gated_modules_reruns_model_stages_not_data(tmp_path, baseline, api_url):
    stages = set(_rerun(tmp_path, baseline, lambda c: _append(c / "bl_core/modules.py"), api_url))
    assert stages >= MODEL_STAGES | {"measure-speed"}
    assert not stages & DATA_STAGES


def test_editing_an_icl_data_file_reruns_exactly_the_icl_evaluations(tmp_path, baseline, api_url):
    def edit(code: Path) -> Path:
        fv_dir = shutil.copytree(baseline[1], tmp_path / "fv")
        items = json.loads((fv_dir / "capitalize.json").read_text())
        items[0]["output"] = items[0]["output"] + "x"
        (fv_dir / "capitalize.json").write_text(json.dumps(items))
        return fv_dir

    stages = _rerun(tmp_path, baseline, edit, api_url)
    assert set(stages) - {"aggregate-report"} == {"evaluate-icl"}
    assert stages.count("evaluate-icl") == 3


def test_a_store_copied_elsewhere_is_served_from_cache_by_another_worker(tmp_path, baseline):
    """The copy stands for a shared volume mounted at another path on another worker (its
    own temporary Prefect server and database, not the session's that ran the baseline):
    every stage comes from the copy's cache, the report included, and nothing reads the
    original (it is moved away during the run). Covers workers sharing one store at the
    same path too: the cache keys, results and artifacts live in the store, not in a
    worker's Prefect database."""
    code, fv_dir, store = baseline
    copy = shutil.copytree(store, tmp_path / "mounted" / "elsewhere")
    hidden = store.with_name("hidden")
    store.rename(hidden)
    try:
        before = len(read_executions(copy))
        # --recheck: through the flow's per-stage keys, not the completed-grid answer
        done = run_bl(code, grid_command(copy, fv_dir, "--recheck"), api_url=None)
    finally:
        # Known gap: the copied MLflow store's experiment keeps its artifact location, so
        # MLflow (not the pipeline) writes the new runs' artifacts to the old path.
        if store.exists():
            assert [p.name for p in store.iterdir()] == ["mlartifacts"]
            shutil.rmtree(store)
        hidden.rename(store)
    assert read_executions(copy)[before:] == []
    assert " from cache, 0 ran " in done.stdout
    assert "Budgeted F=0.0" in done.stdout  # and it still reports the whole grid


def test_an_unchanged_rerun_is_answered_without_starting_prefect(tmp_path, baseline):
    """The completed-grid record (flows/complete.py): a rerun of a finished grid, here from
    a copy of its store at another path, prints the stored summary in a fraction of a
    second; no stage and no Prefect server starts."""
    code, fv_dir, store = baseline
    copy = shutil.copytree(store, tmp_path / "moved")
    before = len(read_executions(copy))
    done = run_bl(code, grid_command(copy, fv_dir), api_url=None)
    assert read_executions(copy)[before:] == []
    assert "(the flow was not started; --recheck runs it)" in done.stdout
    assert "Starting temporary server" not in done.stdout + done.stderr
    assert f"report:     {copy / 'report' / 'report.md'}" in done.stdout  # the copy's paths
    assert "Budgeted F=0.0" in done.stdout
    (copy / "report" / "report.md").unlink()  # the recorded report is gone: the flow runs
    again = run_bl(code, grid_command(copy, fv_dir), api_url=None)
    assert "Starting temporary server" in again.stdout + again.stderr
    assert [e["stage"] for e in read_executions(copy)[before:]] == ["aggregate-report"]


def train_command(store: Path, fv_dir: Path, *extra: str) -> list[str]:
    """``bl train`` with the grid's overrides (the same stage keys)."""
    grid = grid_command(store, fv_dir)
    overrides = grid[grid.index("--set") :]
    return [*grid[:3], "train", "--config", "micro", "--out", str(store), *overrides, *extra]


def _train(tmp_path: Path, baseline, api_url: str, *extra: str) -> tuple[Path, list[dict]]:
    store = shutil.copytree(baseline[2], tmp_path / "store")
    before = len(read_executions(store))
    run_bl(baseline[0], train_command(store, baseline[1], *extra), api_url)
    return store, read_executions(store)[before:]


def _weights(store: Path) -> dict[Path, bytes]:
    found = (store / "stages" / "distill").rglob("*.safetensors")
    return {p.relative_to(store): p.read_bytes() for p in found if "checkpoint" not in str(p)}


def test_bl_train_after_a_grid_runs_only_its_cell_into_the_grids_experiment(
    tmp_path, baseline, api_url
):
    from mlflow.tracking import MlflowClient

    cell = ("--method", "kd_lora", "--teacher", "micro-s")
    store, executed = _train(tmp_path, baseline, api_url, *cell)
    assert {e["label"] for e in executed} == {"micro-s/kd_lora/s0"}
    assert {e["stage"] for e in executed} == {
        "distill",
        "compress",
        "evaluate-perplexity",
        "evaluate-icl",
        "measure-speed",
    }
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("budgeted-lora-micro")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert {"micro-s/kd_lora/s0", "micro-s/budgeted-F0.00/s0", "micro-s/teacher"} <= names


def test_bl_train_with_a_new_learning_rate_retrains_the_cell_only(tmp_path, baseline, api_url):
    cell = ("--method", "budgeted", "--final-fraction", "0.0", "--teacher", "micro-s")
    old = _weights(baseline[2])
    store, executed = _train(
        tmp_path, baseline, api_url, *cell, "--set", "train.learning_rate=1e-3"
    )
    assert {e["stage"] for e in executed} >= {"distill", "compress", "evaluate-perplexity"}
    assert not {e["stage"] for e in executed} & (DATA_STAGES | {"prepare-teacher", "build-student"})
    new = {path: data for path, data in _weights(store).items() if path not in old}
    assert new and all(data not in old.values() for data in new.values())  # new weights


def test_bl_train_with_new_pretraining_tokens_retrains_the_needed_teacher(
    tmp_path, baseline, api_url
):
    cell = ("--method", "budgeted", "--final-fraction", "0.0", "--teacher", "micro-s")
    _, executed = _train(tmp_path, baseline, api_url, *cell, "--set", "pretrain.total_tokens=20480")
    stages = {e["stage"] for e in executed}
    assert stages >= {"prepare-teacher", "build-student", "distill"} and not stages & DATA_STAGES
    # only the named teacher, which is also the smallest (the warm start): not micro-m
    assert {e["label"] for e in executed if e["stage"] == "prepare-teacher"} == {"micro-s"}
