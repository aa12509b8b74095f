"""Stages: the tokenizer (trained BPE or the ladder's own) and token packing."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.config import config_from_dict
from bl_core.data import pack_stage, tokenizer_stage
from bl_core.tokenizer import load_tokenizer, vocabulary_fingerprint
from tasks.common import record_execution, stage_dir


@task(name="prepare-tokenizer", task_run_name="prepare-tokenizer")
def tokenizer_task(
    output_dir: str, tokenizer: dict[str, Any], teachers: list[dict[str, Any]], split: dict
) -> dict[str, Any]:
    """The ladder's tokenizer; trains a byte-level BPE on the training slice when no
    teacher checkpoint brings one."""
    record_execution(output_dir, "prepare-tokenizer", "tokenizer")
    cfg = config_from_dict({"tokenizer": tokenizer, "teachers": teachers})
    payload = {"tokenizer": tokenizer, "teachers": teachers, "split": split["train_fingerprint"]}
    out = stage_dir(output_dir, "prepare-tokenizer", payload)
    tokenizer_dir, vocab_size = tokenizer_stage(cfg, split["split_dir"], out)
    return {
        "tokenizer_dir": tokenizer_dir,
        "vocab_size": vocab_size,
        "fingerprint": vocabulary_fingerprint(load_tokenizer(tokenizer_dir)),
    }


@task(name="pack-tokens", task_run_name="pack-tokens-{which}")
def pack_task(
    output_dir: str, packing: dict[str, Any], split: dict, tokenizer: dict, which: str
) -> dict[str, Any]:
    """Tokenise and pack the ``train`` slice, or the fixed ``val`` token set."""
    record_execution(output_dir, "pack-tokens", which)
    cfg = config_from_dict({"packing": packing})
    fingerprint = split["train_fingerprint" if which == "train" else "eval_fingerprint"]
    payload = {
        "packing": packing,
        "which": which,
        "split": fingerprint,
        "tokenizer": tokenizer["fingerprint"],
    }
    out = stage_dir(output_dir, "pack-tokens", payload)
    meta = pack_stage(cfg, split["split_dir"], tokenizer["tokenizer_dir"], which, out)
    return {
        "packed_dir": str(out),
        "fingerprint": meta["fingerprint"],
        "num_tokens": int(meta["num_tokens"]),
        "num_sequences": int(meta["num_sequences"]),
        "seq_len": int(meta["seq_len"]),
    }
