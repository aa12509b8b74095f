"""Tokenise documents and pack them into fixed-length sequences on disk (DESIGN §8).

Documents are tokenised without special tokens and each is followed by EOS; the
stream is cut into rows of ``seq_len`` tokens and the last partial row is dropped
(nanoGPT-style packing: no padding, every position is trained on)::

    d0 d0 d0 EOS d1 d1 | d1 EOS d2 d2 d2 d2 | d2 EOS d3 ...      rows of seq_len

On-disk format (other stages depend on it exactly), a directory with:

- ``tokens.bin``: flat little-endian token ids, ``uint16`` when ``len(tokenizer) <
  65536`` else ``uint32``; ``num_sequences * seq_len`` of them;
- ``meta.json``: ``{"seq_len", "dtype", "num_sequences", "num_tokens",
  "eos_token_id", "fingerprint", "source_fingerprint"}`` plus the informative
  ``"vocab_size"``, ``"num_documents"`` (documents consumed) and ``"max_tokens"``.

``fingerprint`` is the sha256 of ``"<seq_len>:<dtype>:"`` followed by the bytes of
``tokens.bin``; ``source_fingerprint`` is whatever the caller passes (e.g. the split
slice's fingerprint). Documents are encoded in batches and appended to ``tokens.bin``,
so a corpus larger than RAM packs in bounded memory; the directory appears atomically.

Validation set (DESIGN §8: a fixed ``N`` tokens of the evaluation slice):
``max_tokens=N`` keeps ``N // seq_len`` rows (``N`` rounded *down* to whole rows) and
stops reading. When the slice is shorter, packing keeps every full row there is, emits a
``UserWarning`` and records the actual ``num_tokens`` beside the requested ``max_tokens``
in ``meta.json``: tiny presets have tiny evaluation slices and should still run, so
report ``num_tokens`` from the meta, not the configured ``N``. Zero rows is an error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bl_core.errors import ConfigError, InputError
from bl_core.io import atomic_directory, atomic_write_json

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    """``"uint16"`` when every id fits in 16 bits, else ``"uint32"``."""
    return "uint16" if vocab_size < 2**16 else "uint32"


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Fast tokenizers: batch-encode in Rust, and no "longer than model_max_length"
        # warning for long documents (packing cuts them, the limit does not apply).
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


class _RowWriter:
    """Appends complete rows to ``tokens.bin``, hashing them; holds < seq_len tokens."""

    def __init__(self, file: IO[bytes], seq_len: int, dtype: str, max_rows: int | None) -> None:
        self.file, self.seq_len, self.max_rows = file, seq_len, max_rows
        self.dtype = _DTYPES[dtype]
        self.sha256 = hashlib.sha256(f"{seq_len}:{dtype}:".encode())
        self.rest = np.empty(0, dtype=np.int64)
        self.num_rows = 0

    @property
    def full(self) -> bool:
        return self.max_rows is not None and self.num_rows >= self.max_rows

    def write(self, ids: list[int]) -> None:
        flat = np.concatenate([self.rest, np.asarray(ids, dtype=np.int64)])
        if flat.size and int(flat.max()) > np.iinfo(self.dtype).max:
            raise InputError(
                f"token id {int(flat.max())} does not fit {self.dtype.name}: the tokenizer's "
                "len() understates its vocabulary"
            )
        rows = flat.size // self.seq_len
        if self.max_rows is not None:
            rows = min(rows, self.max_rows - self.num_rows)
        data = flat[: rows * self.seq_len].astype(self.dtype).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.num_rows += rows
        self.rest = flat[rows * self.seq_len :]


def _batches(texts: Iterable[str], batch_size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def pack_documents(
    texts: Iterable[str],
    tokenizer: Any,
    seq_len: int,
    out_dir: str | Path,
    max_tokens: int | None = None,
    *,
    source_fingerprint: str | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenise ``texts`` (streamed) and write packed rows to ``out_dir``; return the meta.

    ``tokenizer``: a transformers tokenizer (``eos_token_id``, ``len()``, callable).
    """
    if seq_len < 2:
        raise ConfigError(f"packing.seq_len={seq_len}: must be >= 2")
    if max_tokens is not None and max_tokens < seq_len:
        raise ConfigError(f"packing.val_tokens={max_tokens}: must be >= seq_len={seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the tokenizer has no EOS token; packing separates documents with it")
    dtype = token_dtype(len(tokenizer))
    max_rows = None if max_tokens is None else max_tokens // seq_len
    num_documents = 0
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        with open(tmp / TOKENS_FILE, "wb") as file:
            writer = _RowWriter(file, seq_len, dtype, max_rows)
            for batch in _batches(texts, batch_size):
                stream: list[int] = []
                for ids in _encode_batch(tokenizer, batch):
                    stream.extend(ids)
                    stream.append(eos)
                writer.write(stream)
                num_documents += len(batch)
                if writer.full:
                    break
        meta = {
            "seq_len": seq_len,
            "dtype": dtype,
            "num_sequences": writer.num_rows,
            "num_tokens": writer.num_rows * seq_len,
            "eos_token_id": int(eos),
            "fingerprint": writer.sha256.hexdigest(),
            "source_fingerprint": source_fingerprint,
            "vocab_size": len(tokenizer),
            "num_documents": num_documents,
            "max_tokens": max_tokens,
        }
        _check_enough(meta, max_rows, out_dir)
        atomic_write_json(tmp / META_FILE, meta)
    return meta


def _check_enough(meta: dict[str, Any], max_rows: int | None, out_dir: str | Path) -> None:
    if meta["num_sequences"] == 0:
        raise InputError(
            f"the documents give fewer than seq_len={meta['seq_len']} tokens: nothing to "
            f"pack into {str(out_dir)!r}"
        )
    if max_rows is not None and meta["num_sequences"] < max_rows:
        warnings.warn(
            f"{str(out_dir)!r}: the documents give only {meta['num_tokens']} tokens in full "
            f"rows, fewer than max_tokens={meta['max_tokens']}; meta.json records the "
            "actual num_tokens",
            UserWarning,
            stacklevel=3,
        )


def read_packed_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a packed directory, checked for consistency."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise InputError(f"packed directory {str(path)!r} has no {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
        seq_len, num_sequences = int(meta["seq_len"]), int(meta["num_sequences"])
        consistent = (
            meta["dtype"] in _DTYPES
            and seq_len >= 1
            and num_sequences >= 1
            and int(meta["num_tokens"]) == seq_len * num_sequences
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{str(meta_path)!r} is corrupt: {err!r}") from None
    if not consistent:
        raise InputError(f"{str(meta_path)!r} is inconsistent: {meta}")
    return meta


def load_packed(path: str | Path) -> np.memmap:
    """The packed rows as a read-only memmap of shape ``(num_sequences, seq_len)``."""
    path = Path(path)
    meta = read_packed_meta(path)
    dtype = _DTYPES[meta["dtype"]]
    tokens_path = path / TOKENS_FILE
    expected = meta["num_tokens"] * dtype.itemsize
    actual = tokens_path.stat().st_size if tokens_path.is_file() else None
    if actual != expected:
        raise InputError(
            f"{str(tokens_path)!r} has {actual if actual is not None else 'no'} bytes; "
            f"meta.json says {meta['num_tokens']} {meta['dtype']} tokens ({expected} bytes)"
        )
    return np.memmap(
        tokens_path, dtype=dtype, mode="r", shape=(meta["num_sequences"], meta["seq_len"])
    )


class PackedDataset(Dataset):
    """Rows of a packed directory as ``{"input_ids": LongTensor (seq_len,)}``.

    The memmap opens lazily in each process, so the dataset pickles cheaply into
    DataLoader workers instead of copying the token file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = read_packed_meta(self.path)
        self._rows: np.memmap | None = load_packed(self.path)  # validate now, fail early

    def __len__(self) -> int:
        return int(self.meta["num_sequences"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} packed sequences")
        if self._rows is None:
            self._rows = load_packed(self.path)
        row = np.array(self._rows[index], dtype=np.int64)  # copy: memmap rows are read-only
        return {"input_ids": torch.from_numpy(row)}  # (seq_len,)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rows"] = None
        return state
