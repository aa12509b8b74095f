"""The shared byte-level BPE tokenizer (bl_core/tokenizer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bl_core.errors import ConfigError, InputError
from bl_core.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    check_shared_vocabulary,
    load_tokenizer,
    train_bpe_tokenizer,
    vocabulary_fingerprint,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Q:apple\nA:Apple\n\nQ:river\nA:River",
    "Return a new list containing all items from the iterable in ascending order.",
    "Unicode: naïve café, Ωmega, 日本語, emoji 🙂 and tabs\tand  double  spaces .",
] * 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("tok") / "bpe"
    train_bpe_tokenizer(iter(TEXTS), vocab_size=320, out_dir=out_dir)
    return out_dir


def test_trained_tokenizer_loads_with_auto_tokenizer_and_round_trips(trained: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN]) == [0, 1]
    assert 258 < len(tokenizer) <= 320
    for text in [*TEXTS[:4], "unseen words: zygote, Xylophone!", " leading space", ""]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_training_compresses_frequent_text(trained: Path) -> None:
    tokenizer = load_tokenizer(trained)
    text = TEXTS[0]
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < 0.75 * len(
        text.encode()
    )  # merges were learned


def test_training_rejects_tiny_vocab_and_no_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size=100"):
        train_bpe_tokenizer(TEXTS, vocab_size=100, out_dir=tmp_path / "a")
    with pytest.raises(InputError, match="no text"):
        train_bpe_tokenizer([], vocab_size=300, out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_load_tokenizer_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'.*missing' does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"'.*empty' has none of tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")


def test_shared_vocabulary_passes_for_one_tokenizer(trained: Path, tiny_tokenizer) -> None:
    loaded = load_tokenizer(trained)
    check_shared_vocabulary([trained, loaded, str(trained)], ["t-small", "t-mid", "t-large"])
    assert vocabulary_fingerprint(loaded) == vocabulary_fingerprint(load_tokenizer(trained))
    assert vocabulary_fingerprint(loaded) != vocabulary_fingerprint(tiny_tokenizer)


def test_vocabulary_mismatch_names_both_models(trained: Path, tiny_tokenizer) -> None:
    with pytest.raises(InputError, match="'teacher-0.1b' and 'teacher-1b' do not share"):
        check_shared_vocabulary([trained, tiny_tokenizer], ["teacher-0.1b", "teacher-1b"])
    with pytest.raises(ValueError, match="2 tokenizers but 1 names"):
        check_shared_vocabulary([trained, tiny_tokenizer], ["only-one"])
