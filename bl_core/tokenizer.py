"""The teacher ladder's shared tokenizer (DESIGN §1, §8).

All teachers of a ladder share one tokenizer: distillation compares teacher and
student distributions token by token, which only means something over one vocabulary
(:func:`check_shared_vocabulary` enforces it). For a ladder trained here
(``TokenizerConfig.path=None``), :func:`train_bpe_tokenizer` trains a byte-level BPE
on the training slice; byte-level, so any UTF-8 text round-trips with no unknown token.

Special tokens: ``<|endoftext|>`` (EOS, also BOS; packing puts it after every
document), ``<|pad|>`` and ``<|sep|>`` (the pretraining curriculum's separator). The
result is saved in Hugging Face format (``tokenizer.json`` + ``tokenizer_config.json``)
and loads with ``AutoTokenizer.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bl_core.errors import ConfigError, InputError
from bl_core.io import atomic_directory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SEP_TOKEN = "<|sep|>"  # the pretraining curriculum's snippet separator (DESIGN §1a)
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, SEP_TOKEN)
_NUM_BYTES = 256  # the byte-level alphabet every vocabulary starts with
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _counted(texts: Iterable[str], counter: list[int]) -> Iterator[str]:
    for text in texts:
        counter[0] += 1
        yield text


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` tokens (bytes and special
    tokens included) on ``texts`` (streamed), save it to ``out_dir`` atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_vocab = _NUM_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ConfigError(
            f"tokenizer.vocab_size={vocab_size}: must be >= {min_vocab} "
            "(256 bytes + the special tokens)"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1 and 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    num_texts = [0]
    backend.train_from_iterator(_counted(texts, num_texts), trainer=trainer)
    if num_texts[0] == 0:
        raise InputError("no text to train the tokenizer on")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        sep_token=SEP_TOKEN,
        # Decoding must give back the exact text; the clean-up would turn " ." into ".".
        clean_up_tokenization_spaces=False,
    )
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return tokenizer


def _looks_local(path: str) -> bool:
    # A hub id is "name" or "org/name"; anything else is meant as a local path.
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory (a tokenizer or model dir) or a hub id.
    Never runs remote code; an InputError names the path when it cannot load."""
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    if local.exists() or _looks_local(str(path)):
        if not local.is_dir():
            problem = "is not a directory" if local.exists() else "does not exist"
            raise InputError(f"tokenizer directory {str(path)!r} {problem}")
        if not any((local / name).is_file() for name in _TOKENIZER_FILES):
            raise InputError(
                f"tokenizer directory {str(path)!r} has none of {', '.join(_TOKENIZER_FILES)}"
            )
    try:
        return AutoTokenizer.from_pretrained(
            str(local if local.exists() else path), trust_remote_code=False
        )
    except (OSError, ValueError) as err:  # not found, offline, unreadable files
        raise InputError(f"cannot load tokenizer {str(path)!r}: {err}") from err


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of the curriculum's separator: ``<|sep|>``, else the tokenizer's own SEP."""
    token_id = tokenizer.get_vocab().get(SEP_TOKEN, tokenizer.sep_token_id)
    if token_id is None:
        raise ConfigError(
            "pretrain.curriculum needs a separator token: the tokenizer has neither "
            f"{SEP_TOKEN!r} nor a sep_token (use pretrain.curriculum=natural)"
        )
    return int(token_id)


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over the token -> id map (added tokens included) and the EOS id."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    payload = json.dumps({"vocab": vocab, "eos_token_id": tokenizer.eos_token_id})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _first_difference(
    name_a: str, vocab_a: dict[str, int], name_b: str, vocab_b: dict[str, int]
) -> str:
    by_id_a = {i: t for t, i in vocab_a.items()}
    by_id_b = {i: t for t, i in vocab_b.items()}
    for token_id in sorted(set(by_id_a) | set(by_id_b)):
        token_a, token_b = by_id_a.get(token_id), by_id_b.get(token_id)
        if token_a != token_b:
            return f"id {token_id} is {token_a!r} in {name_a!r} but {token_b!r} in {name_b!r}"
    return "same tokens, different ids"


def check_shared_vocabulary(
    tokenizers: Sequence[str | Path | PreTrainedTokenizerBase],
    names: Sequence[str] | None = None,
) -> None:
    """Raise InputError naming both models when two tokenizers of a ladder differ in
    vocabulary (token -> id, added tokens included) or EOS id. Tokenisation rules
    (merges, normalisation) are not compared: the ids must agree, which is what KD needs."""
    if names is None:
        names = [
            str(t) if isinstance(t, str | Path) else f"tokenizer {i}"
            for i, t in enumerate(tokenizers)
        ]
    if len(names) != len(tokenizers):
        raise ValueError(f"{len(tokenizers)} tokenizers but {len(names)} names")
    loaded = [load_tokenizer(t) if isinstance(t, str | Path) else t for t in tokenizers]
    if not loaded:
        return
    ref_name, ref = names[0], loaded[0]
    ref_vocab = ref.get_vocab()
    for name, tokenizer in zip(names[1:], loaded[1:], strict=True):
        vocab = tokenizer.get_vocab()
        if vocab != ref_vocab:
            raise InputError(
                f"models {ref_name!r} and {name!r} do not share a vocabulary "
                f"({len(ref_vocab)} vs {len(vocab)} tokens; "
                f"{_first_difference(ref_name, ref_vocab, name, vocab)}); "
                "all teachers of a ladder must use one tokenizer"
            )
        if tokenizer.eos_token_id != ref.eos_token_id:
            raise InputError(
                f"models {ref_name!r} and {name!r} have different EOS ids "
                f"({ref.eos_token_id} vs {tokenizer.eos_token_id})"
            )
