"""Two workers (separate processes, each with its own Prefect server and database) that
share one output directory reuse each other's cached stages: the cache keys, results
and artifacts all live in the shared directory, not in a worker's Prefect database."""

from __future__ import annotations

import subprocess
import sys

import pytest
from subprocess_env import user_env

from tasks.common import read_executions

pytestmark = pytest.mark.slow


def _worker(shared, home) -> subprocess.CompletedProcess:
    env = user_env(PREFECT_HOME=str(home))
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "grid",
        "--config",
        "micro",
        "--out",
        str(shared),
        "--teachers",
        "micro-s",
        "--methods",
        "kd_lora",
        "budgeted",
        "--budgets",
        "0.0",
        "--set",
        "icl.items_per_task=2",
        "--set",
        "pipeline.retries=0",
        "--recheck",  # through the flow's stage keys, not the completed-grid answer
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_second_worker_reuses_the_first_workers_stages(tmp_path):
    shared = tmp_path / "shared"
    first = _worker(shared, tmp_path / "worker-a")
    assert first.returncode == 0, first.stderr[-3000:]
    done = read_executions(shared)
    assert {e["stage"] for e in done} >= {"distill", "compress", "evaluate-icl"}

    second = _worker(shared, tmp_path / "worker-b")
    assert second.returncode == 0, second.stderr[-3000:]
    new = read_executions(shared)[len(done) :]
    assert new == []  # every stage from the first worker's cache, the report included
    assert " from cache, 0 ran " in second.stdout
    assert "Budgeted F=0.0" in second.stdout  # and it still reports the whole grid
