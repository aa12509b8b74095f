"""A ``bl grid`` rerun with nothing to do, answered without starting Prefect (issue 18).

When a grid finishes, ``bl grid`` records what the run depended on — the resolved
configuration and teacher selection, the bytes of every file under ``bl_core/``,
``tasks/`` and ``flows/``, the content of every local file the configuration names, the
Python and library versions and a user-set ``MLFLOW_TRACKING_URI`` — with the summary it
printed, the artifacts the grid was built from and a hash of every report file
(``report/complete.json``). A rerun computes the same key first (tens of milliseconds); if
it matches, every artifact is still there and complete, and the report is the one
recorded, then no stage's cache key can have changed, so the flow would only confirm 100%
cache hits: the stored summary is printed and the run ends, without the ~20 s of imports
and Prefect's temporary server. Anything else — a code edit anywhere, a ``--set``, a
changed data file, a deleted stage directory — runs the flow, whose per-stage keys
(:mod:`tasks.fingerprints`) then decide exactly what reruns. ``--force``, ``--recheck`` and
a ``PREFECT_API_URL`` of your own always run the flow. Paths are stored relative to the
output directory, so a copied or moved output directory answers the same way.
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
from tasks.artifacts import path_problem
from tasks.fingerprints import PROJECT_ROOT, read_files_fingerprint

RECORD = Path("report") / "complete.json"
CODE_DIRS = ("bl_core", "tasks", "flows")
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "prefect", "mlflow", "pandas")
_OUT = "\0out\0"  # the output directory inside the stored summary text
_PATH_SUFFIXES = ("_dir", "_path", "_md", "_csv", "_png")


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


def _artifacts(value: Any, out: Path, found: set[str]) -> set[str]:
    """Relative paths of the output files and directories named anywhere in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and key.endswith(_PATH_SUFFIXES) and item:
                path = Path(item)
                if path.is_absolute() and path.is_relative_to(out):
                    found.add(str(path.relative_to(out)))
            else:
                _artifacts(item, out, found)
    elif isinstance(value, list):
        for item in value:
            _artifacts(item, out, found)
    return found


def _report_hashes(out: Path) -> dict[str, str]:
    report = out / "report"
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(report.rglob("*"))
        if p.is_file() and p.name != RECORD.name
    }


def forget(out: Path) -> None:
    """Before a flow runs: a run that fails half-way must leave no record behind."""
    (out / RECORD).unlink(missing_ok=True)


def record(out: Path, key: str, result: dict[str, Any], summary: str) -> None:
    """After a grid finished with every cell ok: what a later rerun compares against."""
    grid = json.loads((out / "report" / "grid.json").read_text())
    atomic_write_json(
        out / RECORD,
        {
            "key": key,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "stages": result.get("stages"),
            "summary": summary.replace(str(out), _OUT),
            "artifacts": sorted(_artifacts([result, grid], out, set())),
            "report_files": _report_hashes(out),
        },
    )


def completed_summary(out: Path, key: str) -> str | None:
    """The stored summary, with the output directory filled in, if the grid in ``out`` is
    complete for ``key``; else ``None`` (the flow must run)."""
    try:
        rec = json.loads((out / RECORD).read_text())
        if rec["key"] != key:
            return None
        if any(path_problem(out / rel) for rel in rec["artifacts"]):
            return None
        if _report_hashes(out) != rec["report_files"]:
            return None
        summary, stages, finished = rec["summary"], rec["stages"], rec["finished"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, or one this version cannot read: run the flow
    total = stages["stages"] if stages else len(rec["artifacts"])
    lines = [line for line in summary.splitlines() if not line.startswith("stages:")]
    lines += [
        f"stages:     {total} of {total} from cache, 0 ran: nothing changed since {finished}",
        "            (the flow was not started; --recheck runs it)",
    ]
    return "\n".join(lines).replace(_OUT, str(out))
