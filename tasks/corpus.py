"""Stage: corpus hashing and slicing (DESIGN §8's stable MD5 split)."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.config import config_from_dict
from bl_core.data import split_stage
from tasks.common import record_execution, stage_dir


@task(name="split-corpus", task_run_name="split-corpus")
def split_corpus_task(output_dir: str, corpus: dict[str, Any]) -> dict[str, Any]:
    """Split the corpus into train/eval slices; returns paths, counts and fingerprints."""
    record_execution(output_dir, "split-corpus", "corpus")
    cfg = config_from_dict({"corpus": corpus})
    out = stage_dir(output_dir, "split-corpus", corpus)
    split = split_stage(cfg, out)
    return {
        "split_dir": str(out),
        "train_fingerprint": split["train"]["fingerprint"],
        "eval_fingerprint": split["eval"]["fingerprint"],
        "num_train_documents": split["train"]["num_documents"],
        "num_eval_documents": split["eval"]["num_documents"],
    }
