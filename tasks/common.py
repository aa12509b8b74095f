"""Shared Prefect plumbing for the pipeline's stages.

Caching (see ../shared/NOTES.md for the measured recipe and its pitfalls). A stage's cache
key (:class:`StageKey` + ``TASK_SOURCE``) is

* its inputs (config sections as plain dicts, upstream artifact references with
  fingerprints), with paths under the output directory written relative to it
  (``@output_dir/stages/...``) and the output directory itself left out: a copied or moved
  output directory, or a shared volume mounted elsewhere, is served from cache;
* the content of the local files and directories it reads that are not stage artifacts
  (a corpus, the ICL data, a teacher checkpoint: ``tasks.fingerprints``);
* the source of the code it runs: the task itself (``TASK_SOURCE``) and the project
  modules its task module imports, transitively (``tasks.fingerprints``), not all of the
  project: a fix to the report code reruns only the report.

Results persist as one record per key under ``<output_dir>/prefect/results`` (no separate
key storage: Prefect would store the result's *absolute* path in it), holding references
relative to the output directory; :func:`configure_stage` makes a stage see and return
absolute paths in this process. A stage writes its artifact to
``<output_dir>/stages/<stage>/<hash of its inputs>/`` atomically, so a failure never
leaves a half-written directory under the final name, and two configurations never share
an artifact directory.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from transformers.utils import logging as hf_logging

from tasks.fingerprints import code_fingerprint, read_files_fingerprint

# Stages run unattended: transformers' per-load "Loading weights" bars only clutter logs.
hf_logging.disable_progress_bar()

# Inputs that name things (a cell's label, its tracking run) but do not change the work:
# excluded from cache keys, so e.g. nine compression variants share one training.
# The output directory is where, not what: left out too (references inside are relative).
UNCACHED_INPUTS = ("mlflow_run_id", "label", "output_dir")
OUTPUT_ROOT = "@output_dir"  # how a path under the output directory is stored and keyed


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` with ``fn`` applied to every string in its nested dicts/lists/tuples."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_strings(v, fn) for v in value)
    return value


def relativize(value: Any, output_dir: str | Path) -> Any:
    """``/data/outputs/micro/stages/x`` -> ``@output_dir/stages/x`` in any nested
    dict/list/tuple of strings (other values unchanged)."""
    root = str(Path(output_dir).resolve())

    def relative(path: str) -> str:
        if path == root or path.startswith(root + os.sep):
            return OUTPUT_ROOT + path[len(root) :]
        return path

    return _map_strings(value, relative)


def absolutize(value: Any, output_dir: str | Path) -> Any:
    """The inverse of :func:`relativize` for this process's output directory."""
    root = str(Path(output_dir).resolve())

    def absolute(path: str) -> str:
        if path == OUTPUT_ROOT or path.startswith(OUTPUT_ROOT + "/"):
            return root + path[len(OUTPUT_ROOT) :]
        return path

    return _map_strings(value, absolute)


@dataclass
class StageKey(CachePolicy):
    """Cache-key part for a stage: inputs (relative to the output directory), the content
    of the non-artifact files they name, and the code of the stage's module closure."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str:
        output_dir = inputs.get("output_dir")
        kept = {k: v for k, v in inputs.items() if k not in UNCACHED_INPUTS}
        if output_dir is not None:
            kept = relativize(kept, output_dir)
        return hash_objects(
            {
                "inputs": kept,
                "files": read_files_fingerprint(kept, output_dir),
                "code": code_fingerprint(task_ctx.task.fn.__module__),
            },
            raise_on_failure=True,
        )


def stage_cache_policy() -> CachePolicy:
    return StageKey() + TASK_SOURCE


def results_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "prefect" / "results"


def _relocating(fn: Any, output_dir: str | Path) -> Any:
    """``fn`` seeing absolute paths and returning (persisting) relative ones."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = absolutize((args, kwargs), output_dir)
        return relativize(fn(*args, **kwargs), output_dir)

    return run


class Stage:
    """A stage task bound to one output directory: called directly, it returns absolute
    paths; ``submit`` returns Prefect's future (whose relative result the next stage
    resolves itself; read it with :meth:`result`)."""

    def __init__(self, task: Any, output_dir: str | Path) -> None:
        self.task, self.output_dir = task, output_dir
        self.name = task.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return absolutize(self.task(*args, **kwargs), self.output_dir)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        return self.task.submit(*args, **kwargs)

    def with_options(self, **options: Any) -> Stage:
        return Stage(self.task.with_options(**options), self.output_dir)

    def result(self, future: Any) -> Any:
        return absolutize(future.result(), self.output_dir)


def configure_stage(task: Any, output_dir: str | Path, force: bool = False) -> Stage:
    """Bind a stage task to this grid's result storage and cache keys.

    ``force=True`` recomputes the stage on purpose (Prefect's ``refresh_cache``) and
    makes it rebuild its artifact directory.
    """
    bound = task.with_options(
        cache_policy=stage_cache_policy(),
        result_storage=results_dir(output_dir),  # a Path: a str would name a block
        persist_result=True,
        refresh_cache=force or None,
    )
    bound.fn = _relocating(bound.fn, output_dir)
    return Stage(bound, output_dir)


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_dir(output_dir: str | Path, stage: str, payload: Any) -> Path:
    """Where a stage with these inputs writes its artifact. When the running task was
    forced (``refresh_cache``), its old artifact is removed so it is really rebuilt."""
    payload = relativize(payload, output_dir)
    files = read_files_fingerprint(payload, output_dir)  # a changed input file: a new dir
    digest = payload_hash([payload, files] if files else payload)  # unchanged when no files
    path = Path(output_dir) / "stages" / stage / digest[:16]
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
