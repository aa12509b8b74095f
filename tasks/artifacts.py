"""Whether the artifacts a stage result names are still there and complete (issue 17).

Read by the cache policy (:mod:`tasks.store`) before a stage's cached result is used, and
by ``bl grid``'s completed-grid check (:mod:`flows.complete`) without importing Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bl_core.integrity import safetensors_problem

_PATH_SUFFIXES = ("_dir", "_path")


def artifact_problem(result: Any) -> str | None:
    """What is missing or incomplete among the paths a stage result names (``*_dir`` and
    ``*_path`` values, nested), or ``None``."""
    if isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, str) and key.endswith(_PATH_SUFFIXES) and value:
                problem = path_problem(Path(value))
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


def path_problem(path: Path) -> str | None:
    """``None`` if ``path`` (absolute) exists with every ``*.safetensors`` in it complete."""
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
