"""Multi-process training: the same trainer under ``torchrun`` (DDP; gloo on CPU).

``launch(spec, n)`` writes the run's spec as JSON into its run directory and starts

    python -m torch.distributed.run --standalone --nproc_per_node N -m bl_core.launch SPEC

Each process builds the same student and teacher, and :func:`bl_core.training.train`
(through ``accelerate``) wraps the student in DDP and gives each rank its shard of every
batch, so N processes see together exactly what one process would (one optimizer step
is ``micro_batch_size x N`` sequences). Rank 0 writes the checkpoints and the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bl_core.config import config_from_dict
from bl_core.io import atomic_write_json
from bl_core.tracking import MetricsLogger

SPEC_NAME = "launch_spec.json"


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one student (or, with ``"cohort"``, a lockstep cohort) from a JSON spec
    (called in every process)."""
    from bl_core.ladder import scratch_student
    from bl_core.packing import PackedDataset
    from bl_core.student import load_pretrained
    from bl_core.teacher_outputs import StoredTeacher
    from bl_core.training import train

    if "cohort" in spec:
        return run_cohort(spec)
    cfg = config_from_dict(spec["sections"])
    if spec["method"] == "pretrain":
        student = scratch_student(spec["student_dir"], cfg.train.seed)
    else:
        student = load_pretrained(spec["student_dir"])
    outputs = None
    if spec.get("teacher_store"):  # each rank reads its own shard's rows of the store
        outputs = StoredTeacher(spec["teacher_store"], cfg.kd.temperature, spec["vocab_size"])
    teacher_dir = None if outputs is not None else spec.get("teacher_dir")
    return train(
        student,
        load_pretrained(teacher_dir) if teacher_dir else None,
        spec["method"],
        PackedDataset(spec["train_dir"]),
        cfg,
        spec["run_dir"],
        vocab_size=spec["vocab_size"],
        outputs=outputs,
    )


def run_cohort(
    spec: dict[str, Any],
    logger_for: Callable[[dict[str, Any]], MetricsLogger] | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Train a cohort spec's members in lockstep; the main process writes
    ``{"cells": {label: "ok" | error}, "forwards", "requests"}`` to ``result_path``.
    ``logger_for(member)``: each member's logger (a CPU lane's, tasks/lanes.py)."""
    from accelerate import PartialState

    from bl_core.cohort import CohortMember, train_cohort
    from bl_core.packing import PackedDataset
    from bl_core.student import load_pretrained

    members = [
        CohortMember(
            m["label"],
            load_pretrained(m["student_dir"]),
            m["method"],
            config_from_dict(m["sections"]),
            Path(m["run_dir"]),
            logger_for(m) if logger_for else None,
        )
        for m in spec["cohort"]
    ]
    results, counts = train_cohort(
        members,
        load_pretrained(spec["teacher_dir"]),
        PackedDataset(spec["train_dir"]),
        vocab_size=spec["vocab_size"],
        on_step=on_step,
    )
    status = {
        label: "ok" if isinstance(r, dict) else f"{type(r).__name__}: {r}"
        for label, r in results.items()
    }
    result = {"cells": status, **counts}
    if PartialState().is_main_process:
        atomic_write_json(Path(spec["result_path"]), result)
    return result


def launch(spec: dict[str, Any], num_processes: int, timeout_s: float | None = None) -> dict:
    """Run :func:`run_spec` in ``num_processes`` processes; return the run's summary."""
    from bl_core.training import TrainingError, read_summary

    cohort = "cohort" in spec
    run_dir = Path(spec["cohort"][0]["run_dir"]).parent if cohort else Path(spec["run_dir"])
    done = None if cohort else read_summary(run_dir)
    if done is not None:
        return done
    spec_path = run_dir / (f"cohort-{os.getpid()}-{SPEC_NAME}" if cohort else SPEC_NAME)
    if cohort:
        spec = spec | {"result_path": str(spec_path.with_suffix(".result.json"))}
    atomic_write_json(spec_path, spec)
    env = dict(os.environ)
    if not _cuda_available():
        env["ACCELERATE_USE_CPU"] = "true"  # gloo backend; see ../shared/NOTES.md
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        "bl_core.launch",
        str(spec_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    what = "a cohort" if cohort else repr(spec["method"])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise TrainingError(
            f"{num_processes}-process training of {what} in {run_dir} failed "
            f"(exit {proc.returncode}):\n{tail}"
        )
    if cohort:
        result_path = Path(spec["result_path"])
        result = json.loads(result_path.read_text())
        result_path.unlink()
        spec_path.unlink(missing_ok=True)
        return result
    summary = read_summary(run_dir)
    if summary is None:
        raise TrainingError(f"{num_processes}-process training wrote no summary in {run_dir}")
    return summary


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bl_core.launch SPEC.json", file=sys.stderr)
        return 2
    run_spec(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
