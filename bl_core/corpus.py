"""Document sources for teacher pretraining and distillation (DESIGN §8).

Every source yields :class:`Document` ``(key, text)`` through one method,
``iter_documents()``. ``key`` is the document id when the source has one, else the
text itself: it is what the stable hash split of :mod:`bl_core.split` hashes, so it
never depends on the machine (file keys are paths *relative* to the corpus root).

Sources, chosen by ``CorpusConfig.source`` in :func:`build_corpus_source`:

- ``files``: plain-text UTF-8 files (one file, a directory = every ``*.txt`` below it,
  or a glob), one document per file or per blank-line block (``document_unit``);
- ``jsonl``: JSON lines (one file, a directory = every ``*.jsonl`` below it, or a glob)
  with a text field and an optional id field;
- ``hf``: a Hugging Face dataset: hub name, local data file (json/jsonl/parquet/csv/
  txt), data directory, or a ``save_to_disk`` directory; optionally streamed;
- ``embedded``: real English text that ships with every Python: ``pydoc_data.topics``
  (keys ``pydoc-topics/<topic>``) and the docstrings of standard-library modules, one
  document per docstring (keys ``stdlib/<module>.<qualname>``), read by *parsing* their
  source with ``ast`` (importing ``this`` or ``antigravity`` would print or open a browser).

Synthetic ICL episodes (why: :mod:`bl_core.synthetic_icl`): a share
``synthetic_icl_fraction`` of the *documents* (not characters), keyed
``synthetic-icl/<seed>/<index>``; they never enter the evaluation slice.
"""

from __future__ import annotations

import ast
import functools
import gc
import glob
import itertools
import json
import math
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

from bl_core.config import CorpusConfig
from bl_core.errors import ConfigError, InputError
from bl_core.synthetic_icl import seeded_episode

DocumentUnit = Literal["file", "block"]
SYNTHETIC_KEY_PREFIX = "synthetic-icl/"
# Skipped stdlib packages: test suites and IDLE/demo code are mostly not prose; codec
# modules repeat one boilerplate docstring; pydoc_data is read separately as topics.
_SKIPPED_STDLIB = frozenset({"test", "idlelib", "lib2to3", "turtledemo", "encodings", "pydoc_data"})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLANK_LINE = re.compile(r"\n\s*\n")
_HF_BUILDERS = dict(json="json", jsonl="json", parquet="parquet", csv="csv", txt="text")


@dataclass(frozen=True)
class Document:
    key: str
    text: str


class CorpusSource(Protocol):
    def iter_documents(self) -> Iterator[Document]: ...


# ---------------------------------------------------------------- local files


def _resolve_files(path: str, default_pattern: str, kind: str) -> list[tuple[Path, str]]:
    """``(file, key)`` pairs sorted by key; a key is the path relative to the corpus root."""
    if glob.has_magic(path):
        fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), Path(path).parts))
        root = Path(*fixed) if fixed else Path(".")
        files = [Path(p) for p in glob.glob(path, recursive=True)]
    else:
        root = Path(path)
        if root.is_file():
            return [(root, root.name)]
        if not root.is_dir():
            raise InputError(f"corpus path {path!r} does not exist")
        files = list(root.glob(default_pattern))
    pairs = [(f, f.relative_to(root).as_posix()) for f in files if f.is_file()]
    if not pairs:
        raise InputError(f"corpus path {path!r} matches no {kind} files")
    return sorted(pairs, key=lambda pair: pair[1])


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"text file {str(file)!r} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise InputError(f"cannot read text file {str(file)!r}: {err}") from None


class TextFilesSource:
    """Plain-text files; one document per file, or per blank-line-separated block."""

    def __init__(self, path: str | Path, document_unit: DocumentUnit = "file") -> None:
        if document_unit not in ("file", "block"):
            raise ConfigError(f"corpus.document_unit={document_unit!r}: must be file or block")
        self.document_unit = document_unit
        self.files = _resolve_files(str(path), "**/*.txt", "text")  # fail before heavy work

    def iter_documents(self) -> Iterator[Document]:
        for file, rel in self.files:
            text = _read_text(file)
            if not text.strip():
                raise InputError(f"text file {str(file)!r} is empty")
            if self.document_unit == "file":
                yield Document(rel, text.strip())
                continue
            blocks = (block.strip() for block in _BLANK_LINE.split(text))
            for index, block in enumerate(b for b in blocks if b):
                yield Document(f"{rel}#{index}", block)


def _record_to_document(
    record: Any, text_field: str, id_field: str | None, where: str
) -> Document | None:
    """One JSON/dataset record as a document; ``None`` for a blank text (no tokens)."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected an object, got {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise InputError(f"{where}: no text field {text_field!r} (fields: {fields})")
    text = record[text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    if not text.strip():
        return None
    if id_field is None:
        return Document(text, text)
    if record.get(id_field) is None:
        raise InputError(f"{where}: no id field {id_field!r}")
    return Document(str(record[id_field]), text)


class JsonlSource:
    """JSON lines, one object per line; blank lines are ignored."""

    def __init__(self, path: str | Path, text_field: str = "text", id_field: str | None = None):
        self.text_field, self.id_field = text_field, id_field
        self.files = _resolve_files(str(path), "**/*.jsonl", "JSONL")

    def iter_documents(self) -> Iterator[Document]:
        for file, _ in self.files:
            yield from self._read_file(file)

    def _read_file(self, file: Path) -> Iterator[Document]:
        num_documents = 0
        try:
            with file.open(encoding="utf-8") as lines:
                for line_number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    where = f"JSONL file {str(file)!r} line {line_number}"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise InputError(f"{where}: invalid JSON: {err}") from None
                    doc = _record_to_document(record, self.text_field, self.id_field, where)
                    if doc is not None:
                        num_documents += 1
                        yield doc
        except UnicodeDecodeError as err:
            raise InputError(f"JSONL file {str(file)!r} is not UTF-8 text: {err}") from None
        if num_documents == 0:
            raise InputError(f"JSONL file {str(file)!r} contains no documents")


# ---------------------------------------------------------------- Hugging Face datasets


class HFDatasetSource:
    """A Hugging Face dataset by hub name or local path (file, data dir, ``save_to_disk``)."""

    def __init__(
        self,
        name_or_path: str,
        text_field: str = "text",
        id_field: str | None = None,
        config_name: str | None = None,
        split: str = "train",
        streaming: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.name_or_path, self.config_name, self.split = name_or_path, config_name, split
        self.text_field, self.id_field = text_field, id_field
        self.streaming, self.cache_dir = streaming, cache_dir

    def iter_documents(self) -> Iterator[Document]:
        dataset = self._load()
        where = f"dataset {self.name_or_path!r} split {self.split!r}"
        for index, record in enumerate(dataset):
            doc = _record_to_document(
                record, self.text_field, self.id_field, f"{where} row {index}"
            )
            if doc is not None:
                yield doc

    def _load(self) -> Any:
        import datasets  # heavy; only the hf source needs it

        try:
            dataset = self._open(datasets)
        except InputError:
            raise
        except (OSError, ValueError) as err:  # not found, offline, bad split or config name
            raise InputError(
                f"cannot load Hugging Face dataset {self.name_or_path!r} "
                f"(config {self.config_name!r}, split {self.split!r}): {err}"
            ) from err
        columns = dataset.column_names  # None for some streamed datasets: checked per row
        if columns is not None and self.text_field not in columns:
            raise InputError(
                f"dataset {self.name_or_path!r} has no text field {self.text_field!r} "
                f"(fields: {', '.join(columns)})"
            )
        return dataset

    def _open(self, datasets: Any) -> Any:
        path = Path(self.name_or_path)
        cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        kwargs = {"split": self.split, "streaming": self.streaming, "cache_dir": cache_dir}
        if path.is_dir() and any((path / n).is_file() for n in ("state.json", "dataset_dict.json")):
            return self._from_disk(datasets.load_from_disk(str(path)))  # a save_to_disk dir
        if not path.is_file():  # a hub name or a directory of data files
            return datasets.load_dataset(self.name_or_path, name=self.config_name, **kwargs)
        builder = _HF_BUILDERS.get(path.suffix.lower().lstrip("."))
        if builder is None:
            raise InputError(f"dataset file {str(path)!r}: unsupported type {path.suffix!r}")
        return datasets.load_dataset(builder, data_files={self.split: str(path)}, **kwargs)

    def _from_disk(self, dataset: Any) -> Any:
        if hasattr(dataset, "keys"):  # a DatasetDict: pick the split
            if self.split not in dataset:
                splits = ", ".join(dataset.keys())
                raise InputError(
                    f"dataset {self.name_or_path!r} has no split {self.split!r} (splits: {splits})"
                )
            dataset = dataset[self.split]
        return dataset.to_iterable_dataset() if self.streaming else dataset


# ---------------------------------------------------------------- embedded stdlib text


def _named_docstrings(node: ast.AST, name: str) -> Iterator[tuple[str, str]]:
    """``(qualified name, docstring)`` in source order. Only statements are descended
    into, which bounds the recursion (long expressions nest deeply, statements do not)."""
    if isinstance(node, _DOC_NODES):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
            yield name, doc.strip()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _named_docstrings(child, f"{name}.{child.name}")
        elif isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
            yield from _named_docstrings(child, name)


def _module_documents(module: str, path: Path) -> Iterator[Document]:
    """One document per docstring, keyed ``stdlib/<module>.<qualname>``: per-docstring
    documents let exact deduplication drop boilerplate ("Return self==value.") and give
    the 0.2% evaluation slice a few dozen documents rather than one or two modules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in old docstrings warn
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # some stdlib files are deliberately invalid
            return
    occurrences: dict[str, int] = {}
    for qualname, doc in _named_docstrings(tree, module):
        # Conditional definitions repeat a name (``if sys.platform ...: def f``).
        count = occurrences[qualname] = occurrences.get(qualname, 0) + 1
        yield Document(f"stdlib/{qualname}" + (f"#{count}" if count > 1 else ""), doc)


def _stdlib_sources() -> Iterator[tuple[str, Path]]:
    """``(module name, source file)`` for pure-Python stdlib modules and their submodules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for name in sorted(sys.stdlib_module_names - _SKIPPED_STDLIB):
        if (root / f"{name}.py").is_file():
            yield name, root / f"{name}.py"
        elif (root / name / "__init__.py").is_file():
            for path in sorted((root / name).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if _TEST_DIRS.isdisjoint(parts):
                    yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


@functools.cache
def embedded_documents() -> tuple[Document, ...]:
    """The embedded corpus, sorted by key, deduplicated by text (first key wins). It
    depends only on the Python version, not on other packages. Cached: parsing takes ~3 s."""
    from pydoc_data.topics import topics  # a plain dict of help texts, safe to import

    docs = [Document(f"pydoc-topics/{name}", text.strip()) for name, text in topics.items()]
    # Parsing allocates millions of acyclic AST nodes; with the cyclic collector on, each
    # burst rescans the host's whole heap (torch, transformers): about 2x slower.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for module, path in _stdlib_sources():
            docs.extend(_module_documents(module, path))
    finally:
        if gc_was_enabled:
            gc.enable()
    seen: set[str] = set()
    unique = []
    for doc in sorted(docs, key=lambda d: d.key):
        if doc.text and doc.text not in seen:
            seen.add(doc.text)
            unique.append(doc)
    return tuple(unique)


class EmbeddedSource:
    """Python's own documentation as a corpus: no download, no other package."""

    def iter_documents(self) -> Iterator[Document]:
        return iter(embedded_documents())


# ---------------------------------------------------------------- synthetic ICL episodes


def is_synthetic_key(key: str) -> bool:
    return key.startswith(SYNTHETIC_KEY_PREFIX)


def synthetic_icl_documents(seed: int = 0) -> Iterator[Document]:
    """An endless, deterministic stream of episodes; episode ``i`` depends only on
    ``(seed, i)``, so it does not change when the real corpus does."""
    for index in itertools.count():
        yield Document(f"{SYNTHETIC_KEY_PREFIX}{seed}/{index}", seeded_episode(seed, index))


class SyntheticICLMixture:
    """Interleave episodes with a source so that a share ``fraction`` of the documents
    are synthetic: after the n-th real document, episodes are emitted until there are
    ``floor(n * fraction / (1 - fraction))``. Streaming; needs no corpus size."""

    def __init__(self, source: CorpusSource, fraction: float, seed: int = 0) -> None:
        if not 0 <= fraction < 1:
            raise ConfigError(f"corpus.synthetic_icl_fraction={fraction!r}: must be in [0, 1)")
        self.source, self.fraction, self.seed = source, fraction, seed

    def iter_documents(self) -> Iterator[Document]:
        share = Fraction(str(self.fraction))  # exact decimal: 0.1 gives exactly 1 in 10
        ratio = share / (1 - share)
        episodes = synthetic_icl_documents(self.seed)
        num_synthetic = 0
        for num_real, doc in enumerate(self.source.iter_documents(), start=1):
            yield doc
            while num_synthetic < math.floor(ratio * num_real):
                yield next(episodes)
                num_synthetic += 1


class LimitedSource:
    """The first ``max_documents`` documents of a source."""

    def __init__(self, source: CorpusSource, max_documents: int) -> None:
        self.source, self.max_documents = source, max_documents

    def iter_documents(self) -> Iterator[Document]:
        return itertools.islice(self.source.iter_documents(), self.max_documents)


def build_corpus_source(cfg: CorpusConfig, cache_dir: str | Path | None = None) -> CorpusSource:
    """The source a config names. ``max_documents`` caps the *real* documents; synthetic
    episodes come on top. ``cache_dir`` is the datasets cache for ``source="hf"``."""
    source: CorpusSource
    if cfg.source == "embedded":
        source = EmbeddedSource()
    elif cfg.path is None:
        raise ConfigError(f"corpus.source={cfg.source!r} needs corpus.path")
    elif cfg.source == "files":
        source = TextFilesSource(cfg.path, cfg.document_unit)
    elif cfg.source == "jsonl":
        source = JsonlSource(cfg.path, cfg.text_field, cfg.id_field)
    else:
        hf_args = (cfg.text_field, cfg.id_field, cfg.hf_config_name, cfg.hf_split, cfg.streaming)
        source = HFDatasetSource(cfg.path, *hf_args, cache_dir=cache_dir)
    if cfg.max_documents is not None:
        source = LimitedSource(source, cfg.max_documents)
    if cfg.synthetic_icl_fraction > 0:
        source = SyntheticICLMixture(source, cfg.synthetic_icl_fraction, cfg.synthetic_icl_seed)
    return source
