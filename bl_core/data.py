"""From a corpus config to the artifacts training and evaluation read (DESIGN §8).

    corpus ──split──► split/{train,eval}.jsonl ──tokenizer──► tokenizer/
                                  └──pack──► train/ (packed rows)   val/ (fixed tokens)

Each stage writes its directory atomically and is skipped when the directory already
exists, so a crashed preparation resumes where it stopped. Stage directories live under
``<data_root>/<key>/`` where the key hashes the config sections that shape the data:
editing the corpus or tokenizer settings never reuses stale artifacts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bl_core.config import BudgetedLoRAConfig
from bl_core.corpus import build_corpus_source
from bl_core.errors import InputError
from bl_core.hub import resolve_model_dir
from bl_core.packing import pack_documents, read_packed_meta
from bl_core.split import iter_slice_texts, load_split, split_corpus
from bl_core.tokenizer import load_tokenizer, train_bpe_tokenizer


@dataclass(frozen=True)
class DataArtifacts:
    """Paths and fingerprints of prepared data (JSON-able via :meth:`to_dict`)."""

    root: str
    split_dir: str
    tokenizer_dir: str
    train_dir: str
    val_dir: str
    vocab_size: int
    train_fingerprint: str
    val_fingerprint: str
    val_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def data_key(cfg: BudgetedLoRAConfig, tokenizer_path: str | None = None) -> str:
    """A short hash of everything that determines the prepared data."""
    shaping = {
        "corpus": cfg.corpus.model_dump(mode="json"),
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "packing": cfg.packing.model_dump(mode="json"),
        "tokenizer_path": tokenizer_path,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def resolve_tokenizer_path(cfg: BudgetedLoRAConfig) -> str | None:
    """The ladder's own tokenizer: ``tokenizer.path``, else the first checkpoint teacher's
    directory (a Hub id's snapshot at its revision); ``None`` means train a BPE on the
    corpus (embedded ladder)."""
    if cfg.tokenizer.path:
        return cfg.tokenizer.path
    for teacher in cfg.teachers:
        if teacher.path:
            return resolve_model_dir(teacher.path, teacher.revision, f"teacher {teacher.name!r}")
    return None


def split_stage(cfg: BudgetedLoRAConfig, out_dir: str | Path) -> dict:
    """Stage 1: the stable MD5 split of the configured corpus (skipped when present)."""
    out_dir = Path(out_dir)
    if not (out_dir / "split.json").is_file():
        source = build_corpus_source(cfg.corpus, out_dir.parent / "hf-cache")
        split_corpus(source, out_dir, cfg.corpus.eval_per_10k, overwrite=True)
    return load_split(out_dir).to_dict()


def tokenizer_stage(
    cfg: BudgetedLoRAConfig, split_dir: str | Path, out_dir: str | Path
) -> tuple[str, int]:
    """Stage 2: the ladder's tokenizer, or a byte-level BPE trained on the training slice.
    Returns ``(tokenizer_dir, vocab_size)``."""
    tokenizer_path = resolve_tokenizer_path(cfg)
    if tokenizer_path is None:
        tokenizer_path = str(out_dir)
        if not Path(out_dir).is_dir():
            split = load_split(split_dir)
            train_bpe_tokenizer(
                iter_slice_texts(split.train.path),
                cfg.tokenizer.vocab_size,
                out_dir,
                overwrite=True,
            )
    return tokenizer_path, len(load_tokenizer(tokenizer_path))


def pack_stage(
    cfg: BudgetedLoRAConfig,
    split_dir: str | Path,
    tokenizer_dir: str | Path,
    which: str,
    out_dir: str | Path,
) -> dict:
    """Stage 3: pack the ``train`` slice, or ``val`` tokens of the evaluation slice."""
    if which not in ("train", "val"):
        raise ValueError(f"which={which!r}: expected 'train' or 'val'")
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").is_file():
        split = load_split(split_dir)
        info = split.train if which == "train" else split.eval
        pack_documents(
            iter_slice_texts(info.path),
            load_tokenizer(tokenizer_dir),
            cfg.packing.seq_len,
            out_dir,
            max_tokens=None if which == "train" else cfg.packing.val_tokens,
            source_fingerprint=info.fingerprint,
            overwrite=True,
        )
    meta = read_packed_meta(out_dir)
    if meta["num_sequences"] < 1:
        raise InputError(f"{which} slice gave no sequence of {cfg.packing.seq_len} tokens")
    return meta


def prepare_data(cfg: BudgetedLoRAConfig, data_root: str | Path) -> DataArtifacts:
    """All three stages under ``data_root/<data_key>/`` in one call (tests and scripts;
    the pipeline runs them as separate cached stages)."""
    root = Path(data_root) / data_key(cfg, resolve_tokenizer_path(cfg))
    split_stage(cfg, root / "split")
    tok_dir, vocab_size = tokenizer_stage(cfg, root / "split", root / "tokenizer")
    train_meta = pack_stage(cfg, root / "split", tok_dir, "train", root / "train")
    val_meta = pack_stage(cfg, root / "split", tok_dir, "val", root / "val")
    return DataArtifacts(
        root=str(root),
        split_dir=str(root / "split"),
        tokenizer_dir=tok_dir,
        train_dir=str(root / "train"),
        val_dir=str(root / "val"),
        vocab_size=vocab_size,
        train_fingerprint=train_meta["fingerprint"],
        val_fingerprint=val_meta["fingerprint"],
        val_tokens=int(val_meta["num_tokens"]),
    )
