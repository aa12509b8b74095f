"""Stage: teacher preparation (load a given checkpoint, or pretrain an embedded rung)."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.config import config_from_dict
from bl_core.data import DataArtifacts
from bl_core.ladder import prepare_teacher
from tasks.common import model_fingerprint, record_execution, stage_dir
from tasks.tracking import tracking_logger


@task(name="prepare-teacher", task_run_name="prepare-teacher-{teacher[name]}", tags=["gpu"])
def teacher_task(
    output_dir: str,
    teacher: dict[str, Any],
    pretrain: dict[str, Any],
    tokenizer: dict[str, Any],
    train_data: dict[str, Any],
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Returns ``{"name", "model_dir", "num_params", "num_layers", "fingerprint", ...}``."""
    record_execution(output_dir, "prepare-teacher", teacher["name"])
    cfg = config_from_dict({"teachers": [teacher], "pretrain": pretrain})
    payload = {
        "teacher": teacher,
        "pretrain": pretrain,
        "data": train_data["fingerprint"],
        "tokenizer": tokenizer["fingerprint"],
    }
    data = DataArtifacts(
        root="",
        split_dir="",
        tokenizer_dir=tokenizer["tokenizer_dir"],
        train_dir=train_data["packed_dir"],
        val_dir="",
        vocab_size=tokenizer["vocab_size"],
        train_fingerprint=train_data["fingerprint"],
        val_fingerprint="",
        val_tokens=0,
    )
    run_dir = stage_dir(output_dir, "prepare-teacher", payload)
    info = prepare_teacher(
        cfg.teachers[0], cfg, data, run_dir, logger=tracking_logger(output_dir, mlflow_run_id)
    )
    return {**info, "fingerprint": model_fingerprint(info["model_dir"])}
