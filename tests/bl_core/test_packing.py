"""Packing documents into fixed-length token rows on disk (bl_core/packing.py)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bl_core.errors import ConfigError, InputError
from bl_core.packing import PackedDataset, load_packed, pack_documents, read_packed_meta

DOCS = [f"Document {i}: the quick brown fox jumps over dog number {i * 7}." for i in range(40)]
META_KEYS = {
    "seq_len",
    "dtype",
    "num_sequences",
    "num_tokens",
    "eos_token_id",
    "fingerprint",
    "source_fingerprint",
}


def _stream(tokenizer, docs: list[str]) -> list[int]:
    """Documents + EOS, concatenated: what packing must preserve, in order."""
    out: list[int] = []
    for doc in docs:
        out += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return out


def test_packing_preserves_every_token_in_order(tmp_path: Path, tiny_tokenizer) -> None:
    meta = pack_documents(iter(DOCS), tiny_tokenizer, 16, tmp_path / "p", batch_size=3)
    stream = _stream(tiny_tokenizer, DOCS)
    rows = load_packed(tmp_path / "p")
    assert rows.shape == (len(stream) // 16, 16) and rows.dtype == np.dtype("<u2")
    assert rows.flatten().tolist() == stream[: rows.size]  # only the last partial row is dropped
    assert META_KEYS <= set(meta)
    assert meta == json.loads((tmp_path / "p" / "meta.json").read_text())
    assert (meta["dtype"], meta["num_sequences"], meta["num_tokens"]) == (
        "uint16",
        *rows.shape[:1],
        rows.size,
    )
    assert meta["eos_token_id"] == tiny_tokenizer.eos_token_id
    assert (tmp_path / "p" / "tokens.bin").stat().st_size == 2 * rows.size


def test_packing_does_not_depend_on_batch_size(tmp_path: Path, tiny_tokenizer) -> None:
    one = pack_documents(DOCS, tiny_tokenizer, 32, tmp_path / "a", batch_size=1)
    many = pack_documents(DOCS, tiny_tokenizer, 32, tmp_path / "b", batch_size=1000)
    assert one["fingerprint"] == many["fingerprint"]
    other_len = pack_documents(DOCS, tiny_tokenizer, 16, tmp_path / "c", source_fingerprint="abc")
    assert other_len["fingerprint"] != one["fingerprint"]
    assert other_len["source_fingerprint"] == "abc" and one["source_fingerprint"] is None


def test_max_tokens_gives_a_fixed_validation_set(tmp_path: Path, tiny_tokenizer) -> None:
    def endless():  # a slice far longer than needed: packing must stop reading
        i = 0
        while True:
            yield DOCS[i % len(DOCS)]
            i += 1

    meta = pack_documents(endless(), tiny_tokenizer, 16, tmp_path / "v", max_tokens=100)
    assert (meta["num_sequences"], meta["num_tokens"], meta["max_tokens"]) == (6, 96, 100)
    stream = _stream(tiny_tokenizer, DOCS)
    assert load_packed(tmp_path / "v").flatten().tolist() == stream[:96]


def test_short_slice_warns_and_records_the_actual_count(tmp_path: Path, tiny_tokenizer) -> None:
    with pytest.warns(UserWarning, match="fewer than max_tokens=10000"):
        meta = pack_documents(DOCS[:5], tiny_tokenizer, 16, tmp_path / "v", max_tokens=10_000)
    assert meta["num_tokens"] == len(_stream(tiny_tokenizer, DOCS[:5])) // 16 * 16 < 10_000


def test_too_little_text_and_bad_lengths_are_errors(tmp_path: Path, tiny_tokenizer) -> None:
    with pytest.raises(InputError, match="fewer than seq_len=4096"):
        pack_documents(DOCS[:2], tiny_tokenizer, 4096, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="seq_len=1"):
        pack_documents(DOCS, tiny_tokenizer, 1, tmp_path / "p")
    with pytest.raises(ConfigError, match="val_tokens=8"):
        pack_documents(DOCS, tiny_tokenizer, 16, tmp_path / "p", max_tokens=8)


class _BigVocabTokenizer:
    """A stand-in with a vocabulary too large for uint16: one id per character."""

    eos_token_id = 70_000

    def __len__(self) -> int:
        return 70_001

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [[65_000 + ord(c) % 1000 for c in t] for t in texts]}


def test_large_vocabularies_use_uint32(tmp_path: Path) -> None:
    meta = pack_documents(["abcdef", "xyz"], _BigVocabTokenizer(), 5, tmp_path / "p")
    rows = load_packed(tmp_path / "p")
    assert meta["dtype"] == "uint32" and rows.dtype == np.dtype("<u4")
    assert rows.flatten().tolist() == [
        65_097,
        65_098,
        65_099,
        65_100,
        65_101,
        65_102,
        70_000,
        65_120,
        65_121,
        65_122,
    ]


def test_packed_dataset_returns_long_rows(tmp_path: Path, tiny_tokenizer) -> None:
    pack_documents(DOCS, tiny_tokenizer, 16, tmp_path / "p")
    dataset = PackedDataset(tmp_path / "p")
    rows = load_packed(tmp_path / "p")
    assert len(dataset) == rows.shape[0]
    item = dataset[-1]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (16,)
    assert item["input_ids"].tolist() == rows[-1].tolist()
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    clone = pickle.loads(pickle.dumps(dataset))  # what DataLoader workers receive
    assert torch.equal(clone[3]["input_ids"], dataset[3]["input_ids"])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["input_ids"].shape == (4, 16)


def test_corrupt_packed_directories_name_the_path(tmp_path: Path, tiny_tokenizer) -> None:
    with pytest.raises(InputError, match=r"'.*nothing' has no meta\.json"):
        load_packed(tmp_path / "nothing")
    pack_documents(DOCS, tiny_tokenizer, 16, tmp_path / "p")
    tokens = tmp_path / "p" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(InputError, match=r"tokens\.bin' has \d+ bytes; meta\.json says"):
        load_packed(tmp_path / "p")
    tokens.unlink()
    with pytest.raises(InputError, match=r"tokens\.bin' has no bytes"):
        PackedDataset(tmp_path / "p")
    meta_path = tmp_path / "p" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "num_tokens": 3}))
    with pytest.raises(InputError, match="inconsistent"):
        read_packed_meta(tmp_path / "p")
    meta_path.write_text("{")
    with pytest.raises(InputError, match=r"meta\.json' is corrupt"):
        read_packed_meta(tmp_path / "p")
