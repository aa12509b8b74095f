"""The shared store (tasks/store.py): cache hits checked against their artifacts, and
flock locks that a second worker waits on and that a killed worker never leaves behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from bl_core import interrupt
from bl_core.interrupt import Interrupted
from tasks.store import FlockLockManager, artifact_problem, drop_if_stale

# Another worker holding a stage's lock (what FlockLockManager.acquire_lock does), without
# the seconds of importing Prefect.
HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1] + "/stage-key.lock", "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(locks, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(locks), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_worker_waits_for_the_first(tmp_path):
    manager = FlockLockManager(tmp_path, poll_s=0.05)
    proc = _holder(tmp_path, 1.5)
    assert manager.is_locked("stage-key")
    assert not manager.acquire_lock("stage-key", "me", acquire_timeout=0.3)
    start = time.monotonic()
    assert manager.acquire_lock("stage-key", "me")  # waits until the other one is done
    assert time.monotonic() - start > 0.5
    assert manager.is_lock_holder("stage-key", "me")
    manager.release_lock("stage-key", "me")
    assert not manager.is_locked("stage-key")
    proc.wait()


def test_a_killed_workers_lock_is_gone(tmp_path):
    proc = _holder(tmp_path, 60)
    proc.kill()
    proc.wait()
    manager = FlockLockManager(tmp_path)
    assert manager.acquire_lock("stage-key", "me", acquire_timeout=1)  # at once


def test_threads_of_one_process_exclude_each_other(tmp_path):
    manager = FlockLockManager(tmp_path, poll_s=0.05)
    assert manager.acquire_lock("k", "thread-1")
    assert not manager.acquire_lock("k", "thread-2", acquire_timeout=0.2)
    manager.release_lock("k", "thread-1")
    assert manager.acquire_lock("k", "thread-2", acquire_timeout=0.2)


def test_a_stop_request_ends_the_wait(tmp_path):
    proc = _holder(tmp_path, 60)
    interrupt.request_stop()
    try:
        with pytest.raises(Interrupted):
            FlockLockManager(tmp_path).acquire_lock("stage-key", "me")
    finally:
        interrupt.reset()
        proc.kill()
        proc.wait()


def test_artifact_problems(tmp_path):
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert artifact_problem({"model_dir": str(tmp_path / "gone")}).endswith("is missing")
    assert "damaged model.safetensors" in artifact_problem(
        {"run": {"model_dir": str(weights.parent)}}
    )
    assert artifact_problem({"model_dir": str(tmp_path), "label": "x", "n": 3}) is None


def test_a_stale_cached_result_is_dropped(tmp_path):
    """One record per key under prefect/results, references relative to the output dir."""
    results = tmp_path / "prefect" / "results"
    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(results)), metadata_storage=None
    )
    (tmp_path / "stages" / "kept").mkdir(parents=True)
    store.write(obj={"model_dir": "@output_dir/stages/kept"}, key="fresh")
    store.write(obj={"model_dir": "@output_dir/stages/deleted"}, key="stale")
    assert not drop_if_stale(tmp_path, "fresh")
    assert drop_if_stale(tmp_path, "stale")
    assert not store.exists("stale") and store.exists("fresh")
