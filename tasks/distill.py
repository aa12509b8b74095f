"""Stages: distillation, one task per teacher x method x budget x seed (DESIGN §1, §6), and
the lockstep cohort that trains a teacher's cells on one shared teacher forward (§6a).

``pretrain`` here trains the from-scratch reference student (cross-entropy only) on the
same tokens. Tagged ``gpu``: a tag concurrency limit (``prefect concurrency-limit create
gpu N``) keeps a worker from running more training tasks at once than it has GPUs.

With ``kd.teacher_outputs: shared`` (exact) the teacher branch first runs ``distill-cohort``:
every cell of the teacher whose run is not finished trains there, in lockstep; each cell's
``distill`` task then finds its finished run and returns it. A cell the cohort could not
finish is trained by its own ``distill`` task (online), as with ``teacher_outputs: online``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from bl_core.config import BudgetedLoRAConfig, config_from_dict
from bl_core.ladder import scratch_student
from bl_core.launch import launch
from bl_core.packing import PackedDataset
from bl_core.student import load_pretrained
from bl_core.teacher_outputs import StoredTeacher
from bl_core.training import train
from tasks.common import model_fingerprint, record_execution, stage_dir
from tasks.lanes import run_lanes
from tasks.progress import stage_logger
from tasks.store import store_lock
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


def cell_config(
    sections: dict[str, Any], method: str, final_fraction: float | None, seed: int
) -> tuple[dict[str, Any], BudgetedLoRAConfig]:
    """A cell's sections with its seed and budget applied, and the validated config."""
    sections = {**sections, "train": {**sections["train"], "seed": seed}}
    if method == "budgeted":
        sections["budget"] = {**sections["budget"], "final_fraction": final_fraction}
    return sections, config_from_dict(sections)


def cell_run_dir(
    output_dir: str,
    method: str,
    sections: dict[str, Any],
    student: dict[str, Any],
    teacher: dict[str, Any] | None,
    train_data: dict[str, Any],
    teacher_store: dict[str, Any] | None = None,
) -> Path:
    """Where one cell trains. Online and the exact cohort give identical weights, so that
    choice is not part of the name; a sparse store is (it changes the KD term)."""
    kd = dict(sections.get("kd") or {})
    if kd.get("teacher_top_k") is None:
        kd.pop("teacher_outputs", None)
    payload = {
        "method": method,
        "sections": {**sections, "kd": kd} if "kd" in sections else sections,
        "student": student["fingerprint"],
        "teacher": teacher["fingerprint"] if teacher else None,
        "data": train_data["fingerprint"],
    }
    if teacher_store is not None:
        payload["teacher_store"] = teacher_store["fingerprint"]
    return stage_dir(output_dir, "distill", payload)


def _train_here(
    method, cfg, student, teacher, train_data, tokenizer, run_dir, logger, store, label
):  # noqa: ANN001, E501
    outputs = None
    if method == "pretrain":
        model, teacher_model = scratch_student(student["model_dir"], cfg.train.seed), None
    else:
        model = load_pretrained(student["model_dir"])
        teacher_model = None if store else load_pretrained(teacher["model_dir"])
        if store:
            outputs = StoredTeacher(store["store_dir"], cfg.kd.temperature, tokenizer["vocab_size"])
    return train(
        model,
        teacher_model,
        method,
        PackedDataset(train_data["packed_dir"]),
        cfg,
        run_dir,
        vocab_size=tokenizer["vocab_size"],
        logger=logger,
        outputs=outputs,
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
    teacher_store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one student (or return its run, finished by the cohort); returns its run
    directory, final model and summary.

    ``sections`` comes from :func:`training_sections`; ``seed`` and ``final_fraction``
    are applied on top of it. ``teacher_store``: a ``teacher-outputs`` artifact to read
    the teacher's top-k outputs from instead of running the teacher.
    """
    record_execution(output_dir, "distill", label)
    sections, cfg = cell_config(sections, method, final_fraction, seed)
    run_dir = cell_run_dir(
        output_dir, method, sections, student, teacher, train_data, teacher_store
    )
    if cfg.train.num_processes > 1:
        spec = {
            "method": method,
            "sections": cfg.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "student_dir": student["model_dir"],
            "teacher_dir": teacher["model_dir"] if teacher else None,
            "teacher_store": teacher_store["store_dir"] if teacher_store else None,
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
            teacher_store,
            label,
        )
    final = run_dir / "final"
    trajectory = run_dir / "trajectory.json"
    return {
        "run_dir": str(run_dir),
        "model_dir": str(final),
        "fingerprint": model_fingerprint(final),
        "summary": summary | {"teacher_outputs": cfg.kd.teacher_outputs_form},
        "trajectory_path": str(trajectory) if Path(trajectory).is_file() else None,
        "metrics_path": str(run_dir / "metrics.jsonl"),
    }


@task(
    name="distill-cohort",
    task_run_name="distill-cohort-{teacher[name]}",
    tags=["gpu"],
    cache_policy=NO_CACHE,  # idempotent by its artifacts: finished cells are skipped
)
def cohort_task(
    output_dir: str,
    teacher: dict[str, Any],
    cells: list[dict[str, Any]],
    train_data: dict[str, Any],
    tokenizer: dict[str, Any],
    lanes: int = 1,
) -> dict[str, Any]:
    """:func:`train_cohort` under a lock on the store: a second worker waits for the
    first's cohort, then finds its cells finished (issue 17)."""
    with store_lock(output_dir, f"distill-cohort-{teacher['name']}"):
        return train_cohort(output_dir, teacher, cells, train_data, tokenizer, lanes)


def train_cohort(
    output_dir: str,
    teacher: dict[str, Any],
    cells: list[dict[str, Any]],
    train_data: dict[str, Any],
    tokenizer: dict[str, Any],
    lanes: int = 1,
) -> dict[str, Any]:
    """Train the unfinished cells of one teacher in lockstep on one teacher forward per
    batch. ``cells``: ``{"label", "method", "final_fraction", "seed", "sections",
    "student", "mlflow_run_id"}`` each (the arguments of their ``distill`` tasks). Returns
    ``{"cells": {label: "ok" | error}, "forwards", "requests"}``; a cell that failed here
    is left to its own ``distill`` task. ``lanes`` > 1 on CPU: the cells split over that
    many processes (tasks/lanes.py)."""
    planned = []
    for cell in cells:
        sections, cfg = cell_config(
            cell["sections"], cell["method"], cell["final_fraction"], cell["seed"]
        )
        run_dir = cell_run_dir(
            output_dir, cell["method"], sections, cell["student"], teacher, train_data
        )
        planned.append((cell, cfg, run_dir))
    todo = [p for p in planned if not (p[2] / "summary.json").is_file()]
    status: dict[str, str] = {p[0]["label"]: "ok" for p in planned if p not in todo}
    if not todo:
        return {"cells": status, "forwards": 0, "requests": 0}
    record_execution(output_dir, "distill-cohort", teacher["name"])
    multi = todo[0][1].train.num_processes > 1
    if multi or (lanes > 1 and len(todo) > 1 and not torch.cuda.is_available()):
        members = [
            {
                "label": cell["label"],
                "method": cell["method"],
                "sections": cfg.model_dump(mode="json"),
                "run_dir": str(run_dir),
                "student_dir": cell["student"]["model_dir"],
                "mlflow_run_id": cell.get("mlflow_run_id"),
            }
            for cell, cfg, run_dir in todo
        ]
        spec = {
            "cohort": members,
            "teacher_dir": teacher["model_dir"],
            "train_dir": train_data["packed_dir"],
            "vocab_size": tokenizer["vocab_size"],
        }
        if multi:
            result = launch(spec, todo[0][1].train.num_processes)
        else:
            result = run_lanes(spec, lanes, todo[0][2].parent, stage_logger())
        return {**result, "cells": status | result["cells"]}
    from bl_core.cohort import CohortMember, train_cohort

    members = [
        CohortMember(
            cell["label"],
            load_pretrained(cell["student"]["model_dir"]),
            cell["method"],
            cfg,
            run_dir,
            tracking_logger(output_dir, cell.get("mlflow_run_id"), f"{cell['label']} distill"),
        )
        for cell, cfg, run_dir in todo
    ]
    results, counts = train_cohort(
        members,
        load_pretrained(teacher["model_dir"]),
        PackedDataset(train_data["packed_dir"]),
        vocab_size=tokenizer["vocab_size"],
    )
    for label, result in results.items():
        status[label] = "ok" if isinstance(result, dict) else f"{type(result).__name__}: {result}"
    return {"cells": status, **counts}
