"""A ``bl grid`` rerun with nothing to do, answered without starting Prefect (issue 18).

When a grid finishes, ``bl grid`` records what the run depended on — the resolved
configuration and teacher selection, the bytes of every file under ``bl_core/``,
``tasks/`` and ``flows/``, the content of every local file the configuration names, the
Python and library versions and a user-set ``MLFLOW_TRACKING_URI`` — with the summary it
printed and the size and modification time of every file under ``stages/`` and
``report/`` (``report/complete.json``). A rerun computes the same key first (tens of
milliseconds). If it matches and no file there was deleted, added, truncated or
rewritten, then no stage's cache key can have changed and no artifact is missing: the
flow would only confirm 100% cache hits, so the stored summary is printed and the run
ends, without the ~20 s of imports and Prefect's temporary server. Anything else — a code
edit anywhere, a ``--set``, a changed data file, a deleted stage directory — runs the
flow, whose per-stage keys (:mod:`tasks.fingerprints`) then decide exactly what reruns.
``--force``, ``--recheck`` and a ``PREFECT_API_URL`` of your own always run the flow.
Paths are stored relative to the output directory, so a copied or moved output directory
answers the same way when the copy keeps modification times (``cp -a``,
``shutil.copytree``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bl_core.config import BudgetedLoRAConfig
from bl_core.io import atomic_write_json
from tasks.fingerprints import PROJECT_ROOT, read_files_fingerprint

RECORD = Path("report") / "complete.json"
CODE_DIRS = ("bl_core", "tasks", "flows")
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "prefect", "mlflow", "pandas")
SNAPSHOT_DIRS = ("stages", "report")
_OUT = "\0out\0"  # the output directory inside the stored summary text


def grid_key(cfg: BudgetedLoRAConfig, teachers: list[str] | None) -> str:
    """sha256 over everything a grid's stage keys derive from (see the module docstring)."""
    config = cfg.model_dump(mode="json")
    digest = hashlib.sha256()
    parts = {
        "config": config,
        "teachers": teachers,
        "files": read_files_fingerprint(config),
        "python": sys.version,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "mlflow_uri": os.environ.get("MLFLOW_TRACKING_URI"),
    }
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in _code_files():
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _code_files() -> list[Path]:
    files = []
    for name in CODE_DIRS:
        files += [
            p
            for p in (PROJECT_ROOT / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return sorted(files)


def _snapshot(out: Path) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of every file under ``stages/`` and ``report/``: a
    deleted, truncated, rewritten or added file there sends the rerun to the flow."""
    found = {}
    for name in SNAPSHOT_DIRS:
        for path in sorted((out / name).rglob("*")):
            if path.is_file() and path != out / RECORD:
                stat = path.stat()
                found[str(path.relative_to(out))] = [stat.st_size, stat.st_mtime_ns]
    return found


def forget(out: Path) -> None:
    """Before a flow runs: a run that fails half-way must leave no record behind."""
    (out / RECORD).unlink(missing_ok=True)


def record(out: Path, key: str, result: dict[str, Any], summary: str) -> None:
    """After a grid finished with every cell ok: what a later rerun compares against."""
    atomic_write_json(
        out / RECORD,
        {
            "key": key,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "stages": result.get("stages"),
            "summary": summary.replace(str(out), _OUT),
            "files": _snapshot(out),
        },
    )


def completed_summary(out: Path, key: str) -> str | None:
    """The stored summary, with the output directory filled in, if the grid in ``out`` is
    complete for ``key``; else ``None`` (the flow must run)."""
    try:
        rec = json.loads((out / RECORD).read_text())
        if rec["key"] != key or rec["files"] != _snapshot(out):
            return None
        summary, total, finished = rec["summary"], rec["stages"]["stages"], rec["finished"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, or one this version cannot read: run the flow
    lines = [line for line in summary.splitlines() if not line.startswith("stages:")]
    lines += [
        f"stages:     {total} of {total} from cache, 0 ran: nothing changed since {finished}",
        "            (the flow was not started; --recheck runs it)",
    ]
    return "\n".join(lines).replace(_OUT, str(out))
