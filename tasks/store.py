"""The shared store's integrity: a cache hit is used only while its artifact is still
there and complete (issue 17, item 3).

Prefect serves a cached stage from its result record alone; an artifact deleted or damaged
by hand (a stage directory removed to free space, a truncated copy on a shared volume) was
then handed to the next stage, and the grid crashed. :class:`ArtifactCheck` wraps a
stage's cache policy: it computes the same key, and when the stored result names a path
that no longer exists, or weights that are incomplete, it drops that result (its record
and its cache key, both — NOTES.md: one without the other makes Prefect fail instead of
recompute) so the stage runs again under the same key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from bl_core.integrity import safetensors_problem

log = logging.getLogger("bl_core.store")
_PATH_SUFFIXES = ("_dir", "_path")


def artifact_problem(result: Any) -> str | None:
    """What is missing or incomplete among the paths a stage result names (``*_dir`` and
    ``*_path`` values, nested), or ``None``."""
    if isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, str) and key.endswith(_PATH_SUFFIXES) and value:
                problem = _path_problem(Path(value))
                if problem:
                    return f"{key} {value!r} {problem}"
            elif isinstance(value, (dict, list)):
                problem = artifact_problem(value)
                if problem:
                    return problem
    elif isinstance(result, list):
        for item in result:
            problem = artifact_problem(item)
            if problem:
                return problem
    return None


def _path_problem(path: Path) -> str | None:
    if not path.is_absolute():
        return None  # not a store path
    if not path.exists():
        return "is missing"
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
            if problem:
                return f"holds a damaged {file.name} ({problem})"
    return None


@dataclass
class ArtifactCheck(CachePolicy):
    """``inner``'s key, minus any stored result whose artifacts are gone."""

    inner: CachePolicy | None = None
    results_dir: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None and self.key_storage is not None:
            drop_if_stale(Path(self.key_storage), Path(self.results_dir), key, task_ctx)
        return key


def with_artifact_check(task: Any, results_dir: str | Path) -> Any:
    """``task`` whose cache hits are checked against their artifacts."""
    inner = task.cache_policy
    if not isinstance(inner, CachePolicy) or inner.key_storage is None:
        return task
    policy = ArtifactCheck(
        key_storage=inner.key_storage,
        isolation_level=inner.isolation_level,
        lock_manager=inner.lock_manager,
        inner=inner,
        results_dir=str(results_dir),
    )
    return task.with_options(cache_policy=policy)


def drop_if_stale(keys_dir: Path, results_dir: Path, key: str, task_ctx: Any = None) -> bool:
    """Remove the cached result under ``key`` if its artifacts are gone; True if removed."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    meta = keys_dir / key
    if not meta.is_file():
        return False
    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(results_dir)),
        metadata_storage=LocalFileSystem(basepath=str(keys_dir)),
    )
    try:
        record = store.read(key)
        problem = artifact_problem(record.result)
        storage_key = record.metadata.storage_key
    except Exception as err:  # noqa: BLE001 - an unreadable record is as good as none
        problem, storage_key = f"cached result unreadable ({err!r})", None
    if problem is None:
        return False
    name = task_ctx.task.name if task_ctx is not None else "stage"
    log.warning("%s: cached result dropped, recomputing: %s", name, problem)
    meta.unlink(missing_ok=True)
    if storage_key:
        result = Path(storage_key)
        (result if result.is_absolute() else results_dir / result).unlink(missing_ok=True)
    return True
