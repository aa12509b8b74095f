"""The stable MD5 split of DESIGN §8 (bl_core/split.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from bl_core.corpus import SYNTHETIC_KEY_PREFIX, Document
from bl_core.errors import ConfigError, InputError
from bl_core.split import is_eval_key, iter_slice, iter_slice_texts, load_split, split_corpus

KEYS = [
    "hello",
    "world",
    "stdlib/json",
    "pydoc-topics/assert",
    "The quick brown fox jumps over the lazy dog.",
    "doc-0",
    "doc-352",
    "doc-1091",
    "doc-1114",
    "",
    "ünïcødé",
    "a" * 1000,
]


def _bucket(key: str) -> int:
    """DESIGN §8, computed independently of the package."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % 10_000


@pytest.mark.parametrize("eval_per_10k", [0, 1, 20, 3000, 10_000])
def test_is_eval_key_follows_the_md5_rule(eval_per_10k: int) -> None:
    for key in KEYS:
        assert is_eval_key(key, eval_per_10k) == (_bucket(key) < eval_per_10k), key


def test_known_keys_land_in_known_slices() -> None:
    # Buckets verified once by hand: hello=2994, doc-352=1, doc-1091=13, doc-1114=0.
    assert [is_eval_key(k) for k in ("doc-352", "doc-1091", "doc-1114")] == [True] * 3
    assert not is_eval_key("hello")
    assert not is_eval_key("hello", 2994) and is_eval_key("hello", 2995)
    assert not is_eval_key("doc-1091", 13) and is_eval_key("doc-1091", 14)


def test_eval_fraction_is_within_tolerance_on_100k_keys() -> None:
    keys = [f"document-{i}" for i in range(100_000)]
    num_default = sum(is_eval_key(k) for k in keys)
    assert 140 <= num_default <= 260  # expected 200, std ~14
    num_ten_percent = sum(is_eval_key(k, 1000) for k in keys)
    assert 9_500 <= num_ten_percent <= 10_500  # expected 10_000, std ~95


def _docs(n: int) -> list[Document]:
    return [Document(f"doc-{i}", f"text of document {i}\nline two") for i in range(n)]


def test_split_corpus_writes_slices_counts_and_fingerprints(tmp_path) -> None:
    docs = _docs(2000)
    result = split_corpus(iter(docs), tmp_path / "split", eval_per_10k=500)
    expected_eval = [d for d in docs if _bucket(d.key) < 500]
    expected_train = [d for d in docs if _bucket(d.key) >= 500]
    assert list(iter_slice(tmp_path / "split" / "eval.jsonl")) == expected_eval
    assert list(iter_slice(tmp_path / "split" / "train.jsonl")) == expected_train
    assert result.eval.num_documents == len(expected_eval) > 0
    assert result.train.num_characters == sum(len(d.text) for d in expected_train)
    for info in (result.train, result.eval):
        assert info.fingerprint == hashlib.sha256(info.path.read_bytes()).hexdigest()
    on_disk = json.loads((tmp_path / "split" / "split.json").read_text())
    assert on_disk == result.to_dict() == load_split(tmp_path / "split").to_dict()
    lines = (tmp_path / "split" / "eval.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"key": expected_eval[0].key, "text": expected_eval[0].text}


def test_split_is_stable_across_runs_and_order(tmp_path) -> None:
    docs = _docs(500)
    first = split_corpus(docs, tmp_path / "a", eval_per_10k=1000)
    second = split_corpus(docs, tmp_path / "b", eval_per_10k=1000)
    assert first.to_dict() == second.to_dict()
    reversed_split = split_corpus(docs[::-1], tmp_path / "c", eval_per_10k=1000)
    eval_keys = {d.key for d in iter_slice(tmp_path / "a" / "eval.jsonl")}
    assert {d.key for d in iter_slice(tmp_path / "c" / "eval.jsonl")} == eval_keys
    assert reversed_split.eval.fingerprint != first.eval.fingerprint  # order is hashed


def test_synthetic_episodes_always_train(tmp_path) -> None:
    docs = [Document(f"{SYNTHETIC_KEY_PREFIX}0/{i}", f"Q:x{i}\nA:y") for i in range(300)]
    result = split_corpus(docs, tmp_path / "s", eval_per_10k=5000)
    assert result.eval.num_documents == 0 and result.train.num_documents == 300


def test_split_accepts_a_source_and_reads_texts_back(tmp_path) -> None:
    class Source:
        def iter_documents(self):
            yield from _docs(10)

    split_corpus(Source(), tmp_path / "s", eval_per_10k=0)
    assert list(iter_slice_texts(tmp_path / "s" / "train.jsonl")) == [d.text for d in _docs(10)]


def test_split_refuses_existing_output_and_bad_rate(tmp_path) -> None:
    split_corpus(_docs(3), tmp_path / "s")
    with pytest.raises(FileExistsError):
        split_corpus(_docs(3), tmp_path / "s")
    split_corpus(_docs(4), tmp_path / "s", overwrite=True)
    assert load_split(tmp_path / "s").train.num_documents == 4
    with pytest.raises(ConfigError, match="eval_per_10k=10001"):
        split_corpus(_docs(3), tmp_path / "t", eval_per_10k=10_001)
    with pytest.raises(InputError, match="no documents"):
        split_corpus([], tmp_path / "u")
    assert not (tmp_path / "u").exists()  # nothing half-written


def test_corrupt_slice_and_missing_split_name_the_file(tmp_path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"key": "a", "text": "b"}\n{"key": "a"\n')
    with pytest.raises(InputError, match=r"train\.jsonl.*line 2"):
        list(iter_slice(bad))
    with pytest.raises(InputError, match="does not exist"):
        iter_slice(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="split.json"):
        load_split(tmp_path)
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(InputError, match="split.json"):
        load_split(tmp_path)
