"""What a stage's cache key covers besides its inputs: the code it runs and the files it reads.

Code: a stage is keyed by the source of the project modules its task module really uses —
the transitive closure of its imports within ``bl_core/`` and ``tasks/``, read statically
with ``ast`` (imports inside functions count: they run when the stage runs). So a fix to
the report code reruns only ``aggregate-report``, a fix to the ICL evaluator only the
evaluations that use it, and teacher pretraining survives both.

    tasks/icl.py ─► bl_core/icl.py ─► bl_core/probes.py ...   (hashed: path + bytes)

Three deliberate rules:

* ``from pkg import name`` follows ``pkg/name.py`` when it exists, else ``pkg/__init__.py``;
  a package's ``__init__`` is *not* added merely because a submodule is imported (its
  re-exports do not change what the submodule computes);
* :data:`OBSERVERS` (MLflow tracking, progress display) are not followed: they report on a
  stage and never shape its result, so editing them reruns nothing;
* anything else (a data file, a YAML preset) is an input, keyed by content
  (:func:`read_files_fingerprint`), not code.

Files: every local file or directory a stage reads that is not itself a stage artifact —
the ``path`` of a corpus, tokenizer or teacher, the ICL ``data_dir`` — is keyed by its
content, so editing it reruns exactly the stages that read it.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bl_core", "tasks")
# Modules that only report on a stage (MLflow runs, progress lines): not part of any key.
OBSERVERS = frozenset({"tasks.tracking", "tasks.progress"})
# Config fields that name a local file or directory a stage reads (a Hub id is not local).
PATH_FIELDS = frozenset({"path", "data_dir"})
_BIG_FILE = 256 * 2**20  # bigger files are keyed by size and mtime (hashing them is slow)


def _module_file(name: str) -> Path | None:
    """``bl_core.icl`` -> its file under the project, or None (not ours / not found)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path) -> Iterator[str]:
    """Project modules that ``path`` (module ``name``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield sub if _module_file(sub) else module


@functools.cache
def module_closure(name: str) -> tuple[str, ...]:
    """Sorted project modules ``name`` uses, itself included (observers excluded)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        path = _module_file(current)
        if current in seen or path is None or (current in OBSERVERS and current != name):
            continue
        seen.add(current)
        todo.extend(_imports(current, path))
    return tuple(sorted(seen))


@functools.cache
def code_fingerprint(name: str) -> str:
    """sha256 over the relative paths and bytes of :func:`module_closure` (location-free)."""
    digest = hashlib.sha256()
    for module in module_closure(name):
        path = _module_file(module)
        assert path is not None
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def path_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, of a directory's files or of a glob's matches (names +
    bytes)."""
    if glob.has_magic(str(path)):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        return _files_digest([(str(p), p) for p in matches if p.is_file()])
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return _files_digest([(str(p.relative_to(path)), p) for p in files])
    return _files_digest([(path.name, path)])


def _files_digest(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode())
        stat = file.stat()
        if stat.st_size > _BIG_FILE:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _is_local(path: str) -> bool:
    return Path(path).exists() or (glob.has_magic(path) and bool(glob.glob(path, recursive=True)))


def _read_paths(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in PATH_FIELDS and isinstance(item, str) and _is_local(item):
                yield item
            else:
                yield from _read_paths(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _read_paths(item)


def read_files_fingerprint(value: Any, output_dir: str | Path | None = None) -> dict[str, str]:
    """``{path: content fingerprint}`` for the local files and directories named by
    :data:`PATH_FIELDS` anywhere in ``value`` (stage artifacts under ``output_dir`` are
    keyed by their own fingerprints instead)."""
    root = Path(output_dir).resolve() if output_dir else None
    found = {}
    for item in _read_paths(value):
        if root is not None and Path(item).resolve().is_relative_to(root):
            continue
        found[item] = path_fingerprint(item)
    return found
