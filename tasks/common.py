"""Shared Prefect plumbing for the pipeline's stages.

Caching (see ../shared/NOTES.md for the measured recipe and its pitfalls):

* a stage's cache key = its inputs (config sections as plain dicts, upstream artifact
  references with fingerprints) + its own source (``TASK_SOURCE``) + a hash of the
  project's code (:class:`ProjectSource`): ``TASK_SOURCE`` alone misses edits to the
  ``bl_core`` helpers a task calls;
* results persist under ``<output_dir>/prefect/results`` with the cache keys beside them;
* a stage writes its artifact to ``<output_dir>/stages/<stage>/<hash of its inputs>/``
  atomically, so a failure never leaves a half-written directory under the final name,
  and two configurations never share an artifact directory.

Tasks take and return small JSON-able dicts; models and tensors stay on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from transformers.utils import logging as hf_logging

# Stages run unattended: transformers' per-load "Loading weights" bars only clutter logs.
hf_logging.disable_progress_bar()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_CODE_DIRS = ("bl_core", "tasks")
# Inputs that name things (a cell's label, its tracking run) but do not change the work:
# excluded from cache keys, so e.g. nine compression variants share one training.
UNCACHED_INPUTS = ("mlflow_run_id", "label")


@functools.cache
def project_source_hash() -> str:
    """sha256 over the project's own Python code (bl_core and tasks)."""
    digest = hashlib.sha256()
    for folder in _CODE_DIRS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class ProjectSource(CachePolicy):
    """Cache-key part that changes whenever the project's code changes."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        return project_source_hash()


def stage_cache_policy(output_dir: str | Path) -> CachePolicy:
    policy = INPUTS + TASK_SOURCE + ProjectSource()
    for name in UNCACHED_INPUTS:
        policy = policy - name
    return policy.configure(key_storage=Path(output_dir) / "prefect" / "cache-keys")


def results_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "prefect" / "results"


def configure_stage(task: Any, output_dir: str | Path, force: bool = False) -> Any:
    """Bind a stage task to this grid's result storage and cache keys.

    ``force=True`` recomputes the stage on purpose (Prefect's ``refresh_cache``) and
    makes it rebuild its artifact directory.
    """
    return task.with_options(
        cache_policy=stage_cache_policy(output_dir),
        result_storage=results_dir(output_dir),  # a Path: a str would name a block
        persist_result=True,
        refresh_cache=force or None,
    )


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_dir(output_dir: str | Path, stage: str, payload: Any) -> Path:
    """Where a stage with these inputs writes its artifact. When the running task was
    forced (``refresh_cache``), its old artifact is removed so it is really rebuilt."""
    path = Path(output_dir) / "stages" / stage / payload_hash(payload)[:16]
    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task.refresh_cache and path.exists():
        shutil.rmtree(path)
    return path


_LOG_LOCK = threading.Lock()


def record_execution(output_dir: str | Path, stage: str, label: str) -> None:
    """Append one line per *executed* (not cached) stage to ``executions.jsonl``: the
    grid's own answer to "what did this run actually recompute?"."""
    line = json.dumps({"stage": stage, "label": label, "time": time.time(), "pid": os.getpid()})
    path = Path(output_dir) / "executions.jsonl"
    with _LOG_LOCK, path.open("a") as f:
        f.write(line + "\n")


def read_executions(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "executions.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def file_fingerprint(*paths: str | Path) -> str:
    """sha256 of files' bytes (small files) or of their size and mtime (weights > 256 MiB,
    which would be slow to hash on every run)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(path.name.encode())
        stat = path.stat()
        if stat.st_size > 256 * 2**20:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """Fingerprint of a model directory's config, manifest and weight files."""
    model_dir = Path(model_dir)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".model")
    )
    if not files:
        raise FileNotFoundError(f"model directory {str(model_dir)!r} has no model files")
    return file_fingerprint(*files)


def cell_label(teacher: str, method: str, final_fraction: float | None, seed: int) -> str:
    """``tiny-s/budgeted-F0.40/s0``: one grid cell's name in paths, logs and runs."""
    budget = f"-F{final_fraction:.2f}" if method == "budgeted" else ""
    return f"{teacher}/{method}{budget}/s{seed}"
