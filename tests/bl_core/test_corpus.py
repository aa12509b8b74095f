"""Document sources, the embedded corpus and the synthetic-episode mixture (bl_core/corpus.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bl_core.config import CorpusConfig
from bl_core.corpus import (
    SYNTHETIC_KEY_PREFIX,
    Document,
    HFDatasetSource,
    JsonlSource,
    TextFilesSource,
    build_corpus_source,
    embedded_documents,
    is_synthetic_key,
    synthetic_icl_documents,
)
from bl_core.errors import ConfigError, InputError
from bl_core.synthetic_icl import load_train_words

REPO_ROOT = Path(__file__).resolve().parents[2]
EPISODE = re.compile(r"Q:[^\n]+\nA:[^\n]+(\n\nQ:[^\n]+\nA:[^\n]+)*")


def _docs(source) -> list[Document]:
    return list(source.iter_documents())


# ---------------------------------------------------------------- text files


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("Second file.\n\n\nIts second block.\n")
    (root / "a.txt").write_text("  First file, one block.\n")
    (root / "sub" / "c.txt").write_text("Nested.\n  \nStill nested.")
    (root / "ignored.md").write_text("not a .txt file")
    return root


def test_text_files_one_document_per_file(text_dir: Path) -> None:
    docs = _docs(TextFilesSource(text_dir))
    assert [d.key for d in docs] == ["a.txt", "b.txt", "sub/c.txt"]
    assert docs[0].text == "First file, one block."
    assert docs[1].text == "Second file.\n\n\nIts second block."


def test_text_files_one_document_per_block(text_dir: Path) -> None:
    docs = _docs(TextFilesSource(text_dir, document_unit="block"))
    assert [(d.key, d.text) for d in docs] == [
        ("a.txt#0", "First file, one block."),
        ("b.txt#0", "Second file."),
        ("b.txt#1", "Its second block."),
        ("sub/c.txt#0", "Nested."),
        ("sub/c.txt#1", "Still nested."),
    ]


def test_text_files_glob_and_single_file(text_dir: Path) -> None:
    assert [d.key for d in _docs(TextFilesSource(f"{text_dir}/**/*.txt"))] == [
        "a.txt",
        "b.txt",
        "sub/c.txt",
    ]
    assert [d.key for d in _docs(TextFilesSource(text_dir / "ignored.md"))] == ["ignored.md"]


def test_text_files_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        TextFilesSource(tmp_path / "missing")
    with pytest.raises(InputError, match="matches no text files"):
        TextFilesSource(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(InputError, match=r"empty\.txt.*is empty"):
        _docs(TextFilesSource(tmp_path))
    (tmp_path / "empty.txt").write_bytes(b"\xff\xfe binary")
    with pytest.raises(InputError, match=r"empty\.txt.*not UTF-8"):
        _docs(TextFilesSource(tmp_path))


# ---------------------------------------------------------------- JSONL


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return path


def test_jsonl_keys_are_ids_or_texts(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"id": 7, "body": "seven"}, {"id": "x", "body": ""}])
    assert _docs(JsonlSource(path, text_field="body", id_field="id")) == [Document("7", "seven")]
    assert _docs(JsonlSource(path, text_field="body")) == [Document("seven", "seven")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "ok"\n', r"bad\.jsonl.* line 2: invalid JSON"),
        ('{"text": "ok"}\n\n{"body": "no"}\n', r"bad\.jsonl.* line 3: no text field 'text'"),
        ('{"text": 3}\n', r"line 1: field 'text' is int"),
        ("[1, 2]\n", r"line 1: expected an object"),
        ("\n\n", r"bad\.jsonl.* contains no documents"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        _docs(JsonlSource(tmp_path / "bad.jsonl"))


def test_jsonl_missing_id_names_the_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "a"}, {"text": "b"}])
    with pytest.raises(InputError, match=r"c\.jsonl.* line 2: no id field 'id'"):
        _docs(JsonlSource(path, id_field="id"))


# ---------------------------------------------------------------- Hugging Face datasets

HF_RECORDS = [{"uid": f"r{i}", "content": f"row number {i}"} for i in range(5)]


def test_hf_source_from_a_local_data_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", HF_RECORDS)
    for streaming in (False, True):
        source = HFDatasetSource(
            str(path), "content", "uid", streaming=streaming, cache_dir=tmp_path / "cache"
        )
        assert _docs(source) == [Document(r["uid"], r["content"]) for r in HF_RECORDS]


def test_hf_source_from_save_to_disk_via_config(tmp_path: Path) -> None:
    import datasets

    dataset = datasets.Dataset.from_list(HF_RECORDS)
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "saved"))
    cfg = CorpusConfig(
        source="hf", path=str(tmp_path / "saved"), text_field="content", hf_split="validation"
    )
    assert [d.text for d in _docs(build_corpus_source(cfg))] == [r["content"] for r in HF_RECORDS]
    streamed = cfg.model_copy(update={"streaming": True, "max_documents": 2})
    assert [d.key for d in _docs(build_corpus_source(streamed))] == ["row number 0", "row number 1"]


def test_hf_source_errors(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", HF_RECORDS)
    with pytest.raises(InputError, match="no text field 'text'.*content"):
        _docs(HFDatasetSource(str(path), cache_dir=tmp_path / "cache"))
    with pytest.raises(InputError, match="cannot load Hugging Face dataset"):
        _docs(HFDatasetSource(str(tmp_path / "no" / "such" / "dataset")))


# ---------------------------------------------------------------- embedded corpus


def _digest(docs) -> str:
    sha = hashlib.sha256()
    for doc in docs:
        sha.update(json.dumps([doc.key, doc.text]).encode())
    return sha.hexdigest()


def test_embedded_corpus_is_real_sorted_and_unique() -> None:
    docs = embedded_documents()
    keys = [d.key for d in docs]
    assert len(docs) > 1000 and sum(len(d.text) for d in docs) > 500_000
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len({d.text for d in docs}) == len(docs)
    assert all(d.text.strip() == d.text and d.text for d in docs)
    assert {"pydoc-topics/assert", "stdlib/json", "stdlib/json.dumps"} <= set(keys)
    assert not any(k.startswith(("stdlib/test.", "stdlib/idlelib")) for k in keys)
    assert _docs(build_corpus_source(CorpusConfig())) == list(docs)


def test_embedded_corpus_is_deterministic_offline_and_side_effect_free() -> None:
    """A fresh process (other hash seed, HF offline) builds the same corpus without
    importing modules with side effects (``this`` prints, ``antigravity`` opens a browser)."""
    code = (
        "import sys, hashlib, json\n"
        "from bl_core.corpus import embedded_documents\n"
        "sha = hashlib.sha256()\n"
        "for d in embedded_documents(): sha.update(json.dumps([d.key, d.text]).encode())\n"
        "print(sha.hexdigest(), sorted({'this', 'antigravity'} & set(sys.modules)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [_digest(embedded_documents()), "[]"]  # nothing else printed


# ---------------------------------------------------------------- synthetic ICL episodes


def test_train_words_are_disjoint_from_the_probe_words() -> None:
    probes = pytest.importorskip("bl_core.probes")
    eval_words = getattr(probes, "EVAL_WORDS", None)
    if eval_words is None:
        pytest.skip("bl_core.probes has no EVAL_WORDS")
    normalised = {str(w).strip().lower() for w in eval_words}
    assert not normalised & set(load_train_words())


def test_synthetic_stream_is_deterministic_given_seed() -> None:
    take = lambda seed: [next(it) for it in [synthetic_icl_documents(seed)] for _ in range(20)]  # noqa: E731
    assert take(0) == take(0)
    assert take(0) != take(1)
    assert all(is_synthetic_key(d.key) and EPISODE.fullmatch(d.text) for d in take(3))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_mixture_has_the_requested_document_share(tmp_path: Path, fraction: float) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": f"real {i}"} for i in range(200)])
    cfg = CorpusConfig(source="jsonl", path=str(path), synthetic_icl_fraction=fraction)
    docs = _docs(build_corpus_source(cfg))
    synthetic = [d for d in docs if d.key.startswith(SYNTHETIC_KEY_PREFIX)]
    assert len(docs) - len(synthetic) == 200
    assert abs(len(synthetic) / len(docs) - fraction) < 0.01
    assert docs == _docs(build_corpus_source(cfg))  # deterministic
    assert [d.text for d in docs if not is_synthetic_key(d.key)] == [
        f"real {i}" for i in range(200)
    ]


def test_build_corpus_source_caps_real_documents(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": f"real {i}"} for i in range(50)])
    cfg = CorpusConfig(source="jsonl", path=str(path), max_documents=10)
    assert len(_docs(build_corpus_source(cfg))) == 10
    with pytest.raises(ConfigError):
        build_corpus_source(CorpusConfig.model_construct(source="files", path=None))
