"""The shared store's integrity: a cache hit is used only while its artifact is still
there and complete (issue 17, item 3).

Prefect serves a cached stage from its result record alone; an artifact deleted or damaged
by hand (a stage directory removed to free space, a truncated copy on a shared volume) was
then handed to the next stage, and the grid crashed. :class:`ArtifactCheck` wraps a
stage's cache policy: it computes the same key, and when the stored result names a path
that no longer exists, or weights that are incomplete, it drops that result (one record
per key under ``prefect/results``, metadata and result together: ``tasks.common``) so the
stage runs again under the same key.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.locking.protocol import LockManager

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
    output_dir: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None:
            drop_if_stale(Path(self.output_dir), key, task_ctx)
        return key


def with_artifact_check(stage: Any, output_dir: str | Path) -> Any:
    """``stage`` (a :class:`tasks.common.Stage`) whose cache hits are checked against their
    artifacts, run under a lock on its cache key (SERIALIZABLE: a second worker waits, then
    uses the first's result)."""
    from prefect.transactions import IsolationLevel

    inner = stage.task.cache_policy
    if not isinstance(inner, CachePolicy):
        return stage
    policy = ArtifactCheck(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=FlockLockManager(locks_dir(output_dir)),
        inner=inner,
        output_dir=str(output_dir),
    )
    return stage.with_options(cache_policy=policy)


def drop_if_stale(output_dir: Path, key: str, task_ctx: Any = None) -> bool:
    """Remove the cached result under ``key`` (one record: metadata and result, under
    ``prefect/results``) if the artifacts it names are gone; True if removed."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    from tasks.common import absolutize, results_dir

    record_file = results_dir(output_dir) / key
    if not record_file.is_file():
        return False
    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(results_dir(output_dir))),
        metadata_storage=None,
    )
    try:
        problem = artifact_problem(absolutize(store.read(key).result, output_dir))
    except Exception as err:  # noqa: BLE001 - an unreadable record is as good as none
        problem = f"cached result unreadable ({err!r})"
    if problem is None:
        return False
    name = task_ctx.task.name if task_ctx is not None else "stage"
    log.warning("%s: cached result dropped, recomputing: %s", name, problem)
    record_file.unlink(missing_ok=True)
    return True


# -- locks on the shared store (issue 17, item 4) ----------------------------------------
def locks_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "prefect" / "locks"


class _Held:
    def __init__(self, handle: Any, holder: str) -> None:
        self.handle, self.holder = handle, holder


class FlockLockManager(LockManager):
    """Prefect lock manager on ``flock`` files under ``<store>/prefect/locks/``: a second
    worker (another process, another host on a shared volume whose locks are coherent, or
    another thread) waits while the first runs a stage, then finds its committed result.
    The kernel drops a lock when its process dies, however it dies — Prefect's own file
    lock manager left a lock behind a SIGKILL that hung the next run (NOTES.md).
    While waiting, a stop request (Ctrl-C) ends the wait."""

    def __init__(self, directory: str | Path, poll_s: float = 0.2) -> None:
        self.directory = str(directory)
        self.poll_s = poll_s
        self._held: dict[str, _Held] = {}
        self._guard = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "poll_s": self.poll_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["poll_s"])

    def _path(self, key: str) -> Path:
        path = Path(self.directory)
        path.mkdir(parents=True, exist_ok=True)
        return path / f"{key}.lock"

    def _try(self, key: str) -> Any:
        handle = open(self._path(key), "a")  # noqa: SIM115 - kept open while held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        from bl_core import interrupt

        with self._guard:
            held = self._held.get(key)
            if held is not None and held.holder == holder:
                return True
        start = time.monotonic()
        while True:
            with self._guard:
                if key not in self._held:
                    handle = self._try(key)
                    if handle is not None:
                        handle.write(f"{socket.gethostname()} {os.getpid()} {holder}\n")
                        handle.flush()
                        self._held[key] = _Held(handle, holder)
                        return True
            if acquire_timeout is not None and time.monotonic() - start > acquire_timeout:
                return False
            interrupt.check("waiting for another worker's stage")
            time.sleep(self.poll_s)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout=None, hold_timeout=None):  # noqa: ANN001, ANN201
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            held = self._held.get(key)
            if held is None or held.holder != holder:
                raise ValueError(f"lock {key!r} is not held by {holder!r}")
            del self._held[key]
            fcntl.flock(held.handle, fcntl.LOCK_UN)
            held.handle.close()

    def is_locked(self, key: str) -> bool:
        with self._guard:
            if key in self._held:
                return True
            handle = self._try(key)
        if handle is None:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._guard:
            held = self._held.get(key)
            return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        start = time.monotonic()
        while self.is_locked(key):
            if timeout is not None and time.monotonic() - start > timeout:
                return False
            time.sleep(self.poll_s)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self.wait_for_lock(key, timeout)


@contextmanager
def store_lock(output_dir: str | Path, name: str) -> Iterator[None]:
    """Hold ``<store>/prefect/locks/<name>.lock`` (waiting for another worker's) — for work
    outside Prefect's cache, such as a distill-cohort."""
    manager = FlockLockManager(locks_dir(output_dir))
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    manager.acquire_lock(name, holder)
    try:
        yield
    finally:
        manager.release_lock(name, holder)
