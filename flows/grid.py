"""The ``full-grid`` and ``single-run`` flows (DESIGN §1, §10).

    split-corpus ─► prepare-tokenizer ─► pack-tokens(train, val)
         └─► prepare-teacher × ladder ─► build-student (from the smallest rung)
                 └─► teacher-branch sub-flow per teacher:
                        distill ─► compress ─► evaluate-perplexity / evaluate-icl / measure-speed
                 └─► references: each teacher, the warm-started student, (scratch)
         └─► aggregate-report (Tables 2, 8, 9 + figures)

Every stage is a cached Prefect task (tasks/common.py): a rerun recomputes only what
failed or what a changed input reaches. Flows only compose; the work is in tasks/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from bl_core import interrupt
from bl_core.allocator import tune_cpu_allocator
from bl_core.errors import ConfigError
from bl_core.interrupt import Interrupted
from bl_core.io import atomic_write_json
from bl_core.validate import validate_config
from flows import status
from flows.cells import GridContext, open_cell_run, run_cell, run_reference, share_teacher_outputs
from flows.preflight import grid_config
from tasks import tracking
from tasks.aggregate import aggregate_task, is_current, publish_report, report_inputs
from tasks.common import cell_label
from tasks.report_failures import failure_rows

# Worker threads per flow run. Training tasks also carry the "gpu" tag, whose Prefect
# concurrency limit caps them at the number of GPUs on a worker (README).
_RUNNER = ThreadPoolTaskRunner(max_workers=int(os.environ.get("BL_MAX_WORKERS", "1")))


def cell_specs(ctx: GridContext, teacher: str) -> list[dict[str, Any]]:
    specs = []
    for method in ctx.cfg.grid.methods:
        fractions = ctx.cfg.grid.budgets if method == "budgeted" else (None,)
        for fraction in fractions:
            for seed in ctx.cfg.pipeline.seeds:
                specs.append(
                    {
                        "teacher": teacher,
                        "method": method,
                        "final_fraction": fraction,
                        "seed": seed,
                        "label": cell_label(teacher, method, fraction, seed),
                    }
                )
    return specs


@flow(name="teacher-branch", flow_run_name="teacher-{teacher_name}", task_runner=_RUNNER)
def teacher_branch(grid: dict[str, Any], teacher_name: str) -> list[dict[str, Any]]:
    """Every method x budget x seed cell distilled from one teacher."""
    ctx = GridContext(**grid)
    teacher = ctx.teacher_refs[teacher_name]
    specs = cell_specs(ctx, teacher_name)
    run_ids = {spec["label"]: open_cell_run(ctx, spec) for spec in specs}
    try:
        stores = share_teacher_outputs([(ctx, spec) for spec in specs], teacher, run_ids)
        return [
            run_cell(ctx, spec, teacher, run_ids[spec["label"]], stores.get(spec["label"]))
            for spec in specs
        ]
    except Interrupted:
        tracking.kill_running(list(run_ids.values()))  # the cells a stop never reached
        raise


def write_and_publish_report(
    ctx: GridContext,
    cells: list[dict[str, Any]],
    teacher_order: list[str],
    failures: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The cached aggregate-report stage (recomputed if its files were deleted or another
    grid's report replaced them), then the report attached to this flow run and parent
    MLflow run."""
    inputs = report_inputs(cells)
    report = ctx.task(aggregate_task)(ctx.output_dir, inputs, teacher_order, failures)
    if not is_current(report):
        again = ctx.task(aggregate_task).with_options(refresh_cache=True)
        report = again(ctx.output_dir, inputs, teacher_order, failures)
    return report | {"mlflow_url": publish_report(report, ctx.parent_run_id)}


@flow(name="full-grid", task_runner=_RUNNER, log_prints=True)
def full_grid(
    config: str = "tiny",
    output_dir: str | None = None,
    teachers: list[str] | None = None,
    methods: list[str] | None = None,
    budgets: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """Distil every selected teacher into the student by every method and budget,
    compress, evaluate, and write the report. Returns paths and per-cell results.

    ``teachers`` selects rungs to distil from (all are prepared: the smallest is the
    student's warm start); ``overrides`` are dotted config keys; ``force`` names stages
    to recompute on purpose (e.g. ``["evaluate-icl"]``).
    """
    tune_cpu_allocator()  # this process trains and evaluates: keep freed memory
    cfg, preset = grid_config(config, overrides, methods, budgets, seeds)
    validate_config(cfg, selected_teachers=teachers)  # issue 17: before any stage
    out = str(Path(output_dir or Path("outputs") / preset).resolve())
    ctx = GridContext.start(cfg, preset, out, force or [], grid_id=str(flow_run.get_id()))
    failed = True
    try:
        selected = teachers or [t.name for t in cfg.teachers]
        for name in selected:
            ctx.teacher_ref(name)  # unknown names fail here, before any work
        grid = status.get(ctx.grid_id)
        grid.total_cells = len(selected) * (1 + len(cell_specs(ctx, selected[0]))) + 1
        grid.total_cells += int(cfg.grid.scratch_reference)
        cells = [run_reference(ctx, "teacher", ctx.teacher_refs[n]) for n in selected]
        cells.append(run_reference(ctx, "init", ctx.student_ref))
        if cfg.grid.scratch_reference:
            cells.append(run_cell(ctx, ctx.scratch_spec(), None))
        for name in selected:
            cells += teacher_branch(ctx.to_dict(), name)
        ok = [c for c in cells if c["status"] == "ok"]
        order = [t.name for t in cfg.teachers]
        report = write_and_publish_report(ctx, ok, order, failure_rows(cells))  # issue 17
        # what the grid was: its config and the artifacts its cells used (benchmarks read it)
        atomic_write_json(Path(out) / "report" / "grid.json", ctx.to_dict())
        failures = [
            f"{c['label']} ({c.get('error', '?')[:300]})" for c in cells if c["status"] != "ok"
        ]
        get_run_logger().info("report: %s", report["report_md"])
        failed = bool(failures)
        if failures:
            raise RuntimeError(f"{len(failures)} grid cell(s) failed: {'; '.join(failures)}")
        stages = status.finish(ctx.grid_id)  # "M of N stages from cache, K ran"
        return {"output_dir": out, "report": report, "cells": cells, "stages": stages}
    finally:
        status.finish(ctx.grid_id)  # a failed grid says it too (no-op when done above)
        tracking.close_run(ctx.parent_run_id, failed=failed, killed=interrupt.requested())


@flow(name="single-run", task_runner=_RUNNER, log_prints=True)
def single_run(
    config: str = "tiny",
    teacher: str | None = None,
    method: str = "budgeted",
    final_fraction: float | None = None,
    seed: int = 0,
    output_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """One teacher x method x budget cell of the grid (``bl train``): the same stages and
    stage store (``outputs/<preset>/stages``) and MLflow experiment as ``full-grid``, so
    it reuses what a grid (or an earlier run) computed, and a grid reuses it. Prepares only
    the named rung and the smallest (the warm start); ``method="pretrain"`` is the grid's
    from-scratch reference."""
    tune_cpu_allocator()  # this process trains and evaluates: keep freed memory
    budgets = [final_fraction] if final_fraction is not None else None
    cfg, preset = grid_config(config, overrides, [method], budgets, [seed])
    out = str(Path(output_dir or Path("outputs") / preset).resolve())
    known = [t.name for t in cfg.teachers]
    if teacher is not None and teacher not in known:  # before any work
        raise ConfigError(f"teacher {teacher!r} is not in the ladder (known: {', '.join(known)})")
    ctx = GridContext.start(
        cfg, preset, out, force or [], str(flow_run.get_id()), [teacher] if teacher else [], "train"
    )
    failed = True
    try:
        name = teacher or max(ctx.teacher_refs.values(), key=lambda t: t["num_params"])["name"]
        status.get(ctx.grid_id).total_cells = 1
        if method == "pretrain":
            spec, ref = ctx.scratch_spec(), None
        else:
            fraction = cfg.grid.budgets[0] if method == "budgeted" else None
            label = cell_label(name, method, fraction, seed)
            spec = {"teacher": name, "method": method, "final_fraction": fraction, "seed": seed}
            spec, ref = spec | {"label": label}, ctx.teacher_ref(name)
        cell = run_cell(ctx, spec, ref)
        failed = cell["status"] != "ok"
        if failed:
            raise RuntimeError(f"cell {spec['label']} failed: {cell.get('error')}")
        stages = status.finish(ctx.grid_id)
        return cell | {"output_dir": out, "stages": stages, "experiment": ctx.experiment}
    finally:
        status.finish(ctx.grid_id)
        tracking.close_run(ctx.parent_run_id, failed=failed)
