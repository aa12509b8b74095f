"""The stable train/evaluation split of DESIGN §8, streamed to disk.

A document is in the evaluation slice when

    int(md5(key.encode("utf-8")).hexdigest(), 16) % 10_000 < eval_per_10k

(default 20, i.e. 0.2%), where ``key`` is the document id, else its text
(:mod:`bl_core.corpus`). The hash depends on nothing but the key, so a document lands
in the same slice on every run, machine and worker count, whatever the order.
Synthetic ICL episodes (:func:`bl_core.corpus.is_synthetic_key`) always go to training:
perplexity is measured on real text, and a corpus's evaluation slice does not change
with ``synthetic_icl_fraction``.

The output directory is written atomically (a crash never leaves a half-split corpus)::

    train.jsonl, eval.jsonl   one {"key": ..., "text": ...} object per line, source order
    split.json                {"eval_per_10k": 20,
                               "train": {"file", "num_documents", "num_characters",
                                         "fingerprint"},
                               "eval": {...}}

A slice's ``fingerprint`` is the sha256 of its file, i.e. of its ordered keys and
texts (``sha256sum eval.jsonl`` reproduces it); later stages cache on it. Documents are
streamed: the corpus is never held in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bl_core.corpus import CorpusSource, Document, is_synthetic_key
from bl_core.errors import ConfigError, InputError
from bl_core.io import atomic_directory, atomic_write_json

SLICES = ("train", "eval")
SPLIT_FILE = "split.json"


def is_eval_key(key: str, eval_per_10k: int = 20) -> bool:
    """True when the document with this key belongs to the evaluation slice (DESIGN §8)."""
    # usedforsecurity=False: md5 is a stable bucket hash here; FIPS builds refuse it otherwise.
    digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).hexdigest()
    return int(digest, 16) % 10_000 < eval_per_10k


@dataclass(frozen=True)
class SliceInfo:
    path: Path
    num_documents: int
    num_characters: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "num_documents": self.num_documents,
            "num_characters": self.num_characters,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class SplitResult:
    out_dir: Path
    eval_per_10k: int
    train: SliceInfo
    eval: SliceInfo

    def to_dict(self) -> dict[str, Any]:
        """The content of ``split.json`` (small and JSON-able, for task results)."""
        return {
            "eval_per_10k": self.eval_per_10k,
            "train": self.train.to_dict(),
            "eval": self.eval.to_dict(),
        }


class _SliceWriter:
    """Appends documents to one JSONL slice while counting and hashing what it writes."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.num_documents = 0
        self.num_characters = 0

    def write(self, doc: Document) -> None:
        line = json.dumps({"key": doc.key, "text": doc.text}, ensure_ascii=False) + "\n"
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a \\ud800 escape in JSON input
            raise InputError(f"document {doc.key[:80]!r} is not valid Unicode text") from None
        self.file.write(data)
        self.sha256.update(data)
        self.num_documents += 1
        self.num_characters += len(doc.text)

    def info(self, path: Path) -> SliceInfo:
        return SliceInfo(path, self.num_documents, self.num_characters, self.sha256.hexdigest())


def _documents(source: CorpusSource | Iterable[Document]) -> Iterator[Document]:
    if hasattr(source, "iter_documents"):
        return iter(source.iter_documents())
    return iter(source)  # type: ignore[arg-type]


def split_corpus(
    source: CorpusSource | Iterable[Document],
    out_dir: str | Path,
    eval_per_10k: int = 20,
    overwrite: bool = False,
) -> SplitResult:
    """Stream ``source`` into ``out_dir/{train,eval}.jsonl`` and ``split.json``."""
    if isinstance(eval_per_10k, bool) or not isinstance(eval_per_10k, int):
        raise ConfigError(f"corpus.eval_per_10k={eval_per_10k!r}: must be an integer")
    if not 0 <= eval_per_10k <= 10_000:
        raise ConfigError(f"corpus.eval_per_10k={eval_per_10k}: must be in [0, 10000]")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        with open(tmp / "train.jsonl", "wb") as train_file, open(tmp / "eval.jsonl", "wb") as ev:
            writers = {"train": _SliceWriter(train_file), "eval": _SliceWriter(ev)}
            for doc in _documents(source):
                in_eval = not is_synthetic_key(doc.key) and is_eval_key(doc.key, eval_per_10k)
                writers["eval" if in_eval else "train"].write(doc)
        result = SplitResult(
            out_dir=out_dir,
            eval_per_10k=eval_per_10k,
            train=writers["train"].info(out_dir / "train.jsonl"),
            eval=writers["eval"].info(out_dir / "eval.jsonl"),
        )
        if result.train.num_documents + result.eval.num_documents == 0:
            raise InputError("the corpus yielded no documents to split")
        atomic_write_json(tmp / SPLIT_FILE, result.to_dict())
    return result


def load_split(out_dir: str | Path) -> SplitResult:
    """Read ``split.json`` of a split directory; an InputError names what is wrong."""
    out_dir = Path(out_dir)
    path = out_dir / SPLIT_FILE
    if not path.is_file():
        raise InputError(f"split directory {str(out_dir)!r} has no {SPLIT_FILE}")
    try:
        data = json.loads(path.read_text())
        slices = {
            name: SliceInfo(
                path=out_dir / data[name]["file"],
                num_documents=int(data[name]["num_documents"]),
                num_characters=int(data[name]["num_characters"]),
                fingerprint=str(data[name]["fingerprint"]),
            )
            for name in SLICES
        }
        return SplitResult(out_dir, int(data["eval_per_10k"]), slices["train"], slices["eval"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{str(path)!r} is not a valid split record: {err!r}") from None


def iter_slice(path: str | Path) -> Iterator[Document]:
    """Stream the documents of a slice file (``train.jsonl`` or ``eval.jsonl``) back."""
    path = Path(path)
    if not path.is_file():  # checked now, not at the first ``next()``
        raise InputError(f"slice file {str(path)!r} does not exist")
    return _read_slice(path)


def _read_slice(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                doc = Document(key=record["key"], text=record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InputError(
                    f"slice file {str(path)!r} line {line_number} is corrupt: {err!r}"
                ) from None
            yield doc


def iter_slice_texts(path: str | Path) -> Iterator[str]:
    """The texts of a slice, in order: the input of tokenizer training and packing."""
    return (doc.text for doc in iter_slice(path))
