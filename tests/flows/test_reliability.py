"""Issue 17 end to end, as users and operators run, stop and restart ``bl grid`` (micro
preset, two cells of 80 distillation steps each), on one store, in file order: two workers
at once run every stage once; Ctrl-C and SIGTERM mid-distillation stop a grid within 10 s
with nothing left running; a SIGKILLed grid's temporary server dies with it; the rerun
resumes from the last checkpoint, recomputes an artifact deleted by hand, ends the dead
runs' MLflow runs KILLED, logs each metric step once and gives the undisturbed results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from subprocess_env import user_env

from tasks.common import read_executions

pytestmark = pytest.mark.slow

GRID = [
    "--config",
    "micro",
    "--teachers",
    "micro-s",  # one rung: every behaviour here is per stage, and it halves the test's time
    "--methods",
    "kd_lora",
    "budgeted",
    "--budgets",
    "0.0",
    "--set",
    "icl.items_per_task=2",
    "--set",
    "pipeline.retries=0",
    "--set",
    "train.total_tokens=81920",  # 80 steps per cell: time to catch it mid-distillation
    "--set",
    "train.checkpoint_every=5",
]
UMASK = 0o002  # not the default 022: artifacts must follow it (item 8)


def _start(out: Path, *extra: str, log: str = "grid") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "grid", "--out", str(out), *GRID, *extra]
    handle = open(out.parent / f"{out.name}-{log}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        cmd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=user_env(),
        start_new_session=True,  # as a terminal's job: its own process group
        preexec_fn=lambda: os.umask(UMASK),
    )


def _log(out: Path, log: str = "grid") -> str:
    return (out.parent / f"{out.name}-{log}.log").read_text()


def _wait_for_distillation(out: Path, proc: subprocess.Popen, since: float) -> None:
    """Until a distillation stage (cohort or single cell) of this run is in its training
    loop (its first progress line, every 5 steps, is in the log)."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        started = [
            e
            for e in read_executions(out)
            if e["stage"] in ("distill-cohort", "distill") and e["time"] > since
        ]
        if started and " distill: step " in _log(out):
            return  # at once: a micro step takes milliseconds on a quiet machine
        time.sleep(0.05)
    raise AssertionError(f"no distillation started (rc {proc.poll()}): {_log(out)[-3000:]}")


def _processes(proc: subprocess.Popen) -> list[int]:
    """The grid and everything in its session, and its server (from its PID file)."""
    found = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _server_pid(out: Path, proc: subprocess.Popen) -> int:
    return int((out / "prefect" / f"server-{proc.pid}.pid").read_text())


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.split(") ")[-1][:1] != "Z":  # a zombie has exited
            alive.append(pid)
    return alive


def _stop(out: Path, sig: signal.Signals, *extra: str) -> tuple[int, float, list[int]]:
    """Start a grid, send ``sig`` mid-distillation; (rc, seconds to exit, processes left)."""
    start = time.time()
    proc = _start(out, *extra)
    _wait_for_distillation(out, proc, start)
    pids = _processes(proc) + [_server_pid(out, proc)]
    sent = time.monotonic()
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    seconds = time.monotonic() - sent
    time.sleep(0.5)
    return rc, seconds, _alive(pids)


def _run(out: Path, *extra: str, log: str = "grid") -> tuple[int, str, list]:
    before = len(read_executions(out))
    proc = _start(out, *extra, log=log)
    rc = proc.wait(timeout=900)
    return rc, _log(out, log), read_executions(out)[before:]


def _printed_table(log: str) -> str:
    """The compact Table 2 ``bl grid`` prints before "full table:"."""
    if "full table:" not in log:
        return ""
    return log.split("full table:")[0].rstrip().split("\n\n")[-1]


def _mlflow(out: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("budgeted-lora-micro")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability") / "store"


def test_1_two_workers_at_once_run_every_stage_once(out):
    """Two ``bl grid`` processes started together on one fresh store (item 4)."""
    out.mkdir()
    first, second = _start(out, log="a"), _start(out, log="b")
    rcs = first.wait(timeout=900), second.wait(timeout=900)
    logs = _log(out, "a"), _log(out, "b")
    assert rcs == (0, 0), (logs[0][-2000:], logs[1][-2000:])
    executed = read_executions(out)
    counts = Counter((e["stage"], e["label"]) for e in executed)
    assert counts and max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert {"distill", "compress", "evaluate-icl"} <= {stage for stage, _ in counts}
    assert len(list((out / "prefect" / "homes").iterdir())) == 1  # the second's own home
    assert _printed_table(logs[0]) == _printed_table(logs[1]) != ""
    shutil.copy(out / "report" / "table2.csv", out.parent / "table2-concurrent.csv")


def test_2_sigint_mid_distillation_stops_within_10_s(out):
    rc, seconds, left = _stop(out, signal.SIGINT, "--force", "distill")
    print(f"SIGINT: rc {rc}, exited {seconds:.1f} s after the signal")
    assert rc == 130, _log(out)[-3000:]
    assert seconds < 10 and left == []
    assert "bl grid: stopped (SIGINT)" in _log(out)
    assert list((out / "stages" / "distill").glob("*/checkpoints/step-*"))


def test_3_sigterm_mid_distillation_stops_within_10_s_and_the_rerun_resumed(out):
    rc, seconds, left = _stop(out, signal.SIGTERM)  # a rerun: resumes the SIGINTed stage
    print(f"SIGTERM: rc {rc}, exited {seconds:.1f} s after the signal")
    assert rc == 143, _log(out)[-3000:]
    assert seconds < 10 and left == []
    assert "resumed kd_lora from" in _log(out) or "resumed budgeted from" in _log(out)


def test_4_sigkilled_grid_leaves_no_server_and_its_runs_end_killed(out):
    start = time.time()
    proc = _start(out)  # resumes the SIGTERMed distillation
    _wait_for_distillation(out, proc, start)
    server = _server_pid(out, proc)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive([server]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive([server]) == [], "the SIGKILLed grid's Prefect server is still running"
    _, runs = _mlflow(out)
    left_running = {r.info.run_id for r in runs if r.info.status == "RUNNING"}
    assert left_running and all(
        r.data.tags.get("bl.pid") == str(proc.pid) for r in runs if r.info.run_id in left_running
    )
    # The rerun, after a stage artifact was deleted by hand (item 3).
    compressed = sorted((out / "stages" / "compress").iterdir())
    shutil.rmtree(compressed[0])
    rc, log, executed = _run(out)
    assert rc == 0, log[-3000:]
    assert "resumed" in log and "marked KILLED" in log
    assert Counter(e["stage"] for e in executed)["compress"] >= 1 and compressed[0].is_dir()
    assert "cached result dropped, recomputing" in log
    client, runs = _mlflow(out)
    assert all(r.info.status == "KILLED" for r in runs if r.info.run_id in left_running)
    states = Counter(r.info.status for r in runs)
    assert states["RUNNING"] == 0 and states["KILLED"] >= 3, states
    # each logged step once in every finished cell run, 80 steps / log_every 5
    finished = [
        r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("kind") == "cell"
    ]
    assert finished
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(steps) == list(range(5, 81, 5)), (run.info.run_name, steps)
    for log_file in (out / "stages" / "distill").glob("*/metrics.jsonl"):
        steps = [json.loads(line).get("step") for line in log_file.read_text().splitlines()]
        steps = [s for s in steps if s is not None]
        assert len(steps) == len(set(steps)), log_file
    # stopped three times and resumed: the same results as the two undisturbed workers
    pd.testing.assert_frame_equal(
        pd.read_csv(out.parent / "table2-concurrent.csv", index_col=0),
        pd.read_csv(out / "report" / "table2.csv", index_col=0),
        rtol=1e-6,
    )
    # artifacts follow the umask (002: group-writable), for a second uid on a shared volume
    paths = list((out / "stages").rglob("*"))
    assert all(p.stat().st_mode & 0o664 == 0o664 for p in paths if p.is_file())
    assert all(p.stat().st_mode & 0o775 == 0o775 for p in paths if p.is_dir())
