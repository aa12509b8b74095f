"""Stage: the teacher's top-k outputs on the training sequences its cells read, computed once
and stored for every cell of that teacher (DESIGN §6a, sparse form; ``kd.teacher_top_k``).

The store's *content* for a sequence depends only on the teacher, the data, ``k`` and ``T``
(its fingerprint); which sequences it holds follows from the cells' seeds and token budgets
(``reads``). Cells name the store by its fingerprint, so adding a cell with a longer budget
writes a larger store without invalidating the cells already trained.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from prefect import task

from bl_core.packing import PackedDataset
from bl_core.student import load_pretrained
from bl_core.teacher_outputs import sequences_read, write_teacher_store
from bl_core.training import place_teacher
from tasks.common import payload_hash, record_execution, stage_dir


@task(name="teacher-outputs", task_run_name="teacher-outputs-{teacher[name]}", tags=["gpu"])
def teacher_outputs_task(
    output_dir: str,
    teacher: dict[str, Any],
    train_data: dict[str, Any],
    tokenizer: dict[str, Any],
    kd: dict[str, Any],
    reads: list[dict[str, int]],
    batch_size: int = 8,
    mixed_precision: str = "auto",
) -> dict[str, Any]:
    """Write (or find) the store; return ``{"store_dir", "fingerprint", "bytes", ...}``.

    ``reads``: the training runs that will read it, as :func:`sequences_read` takes them.
    """
    record_execution(output_dir, "teacher-outputs", teacher["name"])
    content = {
        "teacher": teacher["fingerprint"],
        "data": train_data["fingerprint"],
        "top_k": kd["teacher_top_k"],
        "temperature": kd["temperature"],
        "vocab_size": tokenizer["vocab_size"],
    }
    out = stage_dir(output_dir, "teacher-outputs", {**content, "reads": reads})
    if not (out / "meta.json").is_file():
        data = PackedDataset(train_data["packed_dir"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = place_teacher(load_pretrained(teacher["model_dir"]), device, mixed_precision)
        write_teacher_store(
            model,
            data,
            sequences_read(reads, len(data)),
            out,
            top_k=kd["teacher_top_k"],
            temperature=kd["temperature"],
            vocab_size=tokenizer["vocab_size"],
            batch_size=batch_size,
            device=device,
        )
    meta = json.loads((out / "meta.json").read_text())
    keep = ("top_k", "num_rows", "seq_len", "bytes", "bytes_per_position", "teacher_forward_s")
    return {"store_dir": str(out), "fingerprint": payload_hash(content)} | {
        k: meta[k] for k in keep
    }
