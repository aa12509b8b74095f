"""Stage: distillation, one task per teacher x method x budget x seed (DESIGN §1, §6).

``pretrain`` here trains the from-scratch reference student (cross-entropy only) on the
same tokens. Tagged ``gpu``: a tag concurrency limit (``prefect concurrency-limit create
gpu N``) keeps a worker from running more training tasks at once than it has GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from bl_core.config import config_from_dict
from bl_core.ladder import scratch_student
from bl_core.launch import launch
from bl_core.packing import PackedDataset
from bl_core.student import load_pretrained
from bl_core.training import train
from tasks.common import model_fingerprint, record_execution, stage_dir
from tasks.tracking import tracking_logger


def training_sections(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """Only the config that shapes this method's training: the cache key then changes
    exactly when the run would (a new budget list or tau_svd never retrains KD Full)."""
    sections: dict[str, Any] = {"train": config["train"]}
    if method != "pretrain":
        sections["kd"] = config["kd"]
    if method in ("kd_lora", "budgeted"):
        sections["lora"] = config["lora"]
    if method == "budgeted":
        sections["budget"] = config["budget"]
        sections["compression"] = {"tau_drop": config["compression"]["tau_drop"]}
    return sections


def cell_sections(
    sections: dict[str, Any], seed: int, final_fraction: float | None, method: str
) -> dict[str, Any]:
    """:func:`training_sections` with the cell's own seed and budget applied: the config
    this cell trains with (its MLflow params; the distill stage's cache key)."""
    sections = {**sections, "train": {**sections["train"], "seed": seed}}
    if method == "budgeted":
        sections["budget"] = {**sections["budget"], "final_fraction": final_fraction}
    return sections


def _train_here(
    method, cfg, student, teacher, train_data, tokenizer, run_dir, logger, label
) -> dict:  # noqa: ANN001, E501
    if method == "pretrain":
        model, teacher_model = scratch_student(student["model_dir"], cfg.train.seed), None
    else:
        model = load_pretrained(student["model_dir"])
        teacher_model = load_pretrained(teacher["model_dir"])
    return train(
        model,
        teacher_model,
        method,
        PackedDataset(train_data["packed_dir"]),
        cfg,
        run_dir,
        vocab_size=tokenizer["vocab_size"],
        logger=logger,
        progress_label=f"{label} distill",
    )


@task(name="distill", task_run_name="distill-{label}", tags=["gpu"])
def distill_task(
    output_dir: str,
    label: str,
    method: str,
    final_fraction: float | None,
    seed: int,
    sections: dict[str, Any],
    student: dict[str, Any],
    teacher: dict[str, Any] | None,
    train_data: dict[str, Any],
    tokenizer: dict[str, Any],
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Train one student; returns its run directory, final model and summary.

    ``sections`` comes from :func:`training_sections`; ``seed`` and ``final_fraction``
    are applied on top of it.
    """
    record_execution(output_dir, "distill", label)
    sections = cell_sections(sections, seed, final_fraction, method)
    cfg = config_from_dict(sections)
    payload = {
        "method": method,
        "sections": sections,
        "student": student["fingerprint"],
        "teacher": teacher["fingerprint"] if teacher else None,
        "data": train_data["fingerprint"],
    }
    run_dir = stage_dir(output_dir, "distill", payload)
    if cfg.train.num_processes > 1:
        spec = {
            "method": method,
            "sections": cfg.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "student_dir": student["model_dir"],
            "teacher_dir": teacher["model_dir"] if teacher else None,
            "train_dir": train_data["packed_dir"],
            "vocab_size": tokenizer["vocab_size"],
        }
        summary = launch(spec, cfg.train.num_processes)  # curves reach MLflow on record
    else:
        summary = _train_here(
            method,
            cfg,
            student,
            teacher,
            train_data,
            tokenizer,
            run_dir,
            tracking_logger(output_dir, mlflow_run_id),
            label,
        )
    final = run_dir / "final"
    trajectory = run_dir / "trajectory.json"
    return {
        "run_dir": str(run_dir),
        "model_dir": str(final),
        "fingerprint": model_fingerprint(final),
        "summary": summary,
        "trajectory_path": str(trajectory) if Path(trajectory).is_file() else None,
        "metrics_path": str(run_dir / "metrics.jsonl"),
    }
