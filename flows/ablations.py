"""The ``ablations`` flow: the paper's Appendix C sweeps, each variant one cached cell.

| sweep                | method            | varies                                      |
|----------------------|-------------------|---------------------------------------------|
| distillation         | kd_full           | (temperature, kd_weight)                    |
| student_construction | kd_full           | student.layer_selection                     |
| lora_rank            | kd_lora           | lora.rank (lora_alpha = 2 rank)             |
| schedule             | budgeted, F = 0   | decay window: none / short / long           |
| compression          | budgeted, F = 0.4 | (tau_rank, tau_svd); one training, reused   |

A variant differs from the preset only where its sweep says, so unchanged stages (the
data, the ladder, and for the compression sweep the training itself) come from cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from bl_core.allocator import tune_cpu_allocator
from bl_core.config import apply_overrides
from bl_core.errors import ConfigError
from flows import status
from flows.cells import GridContext, open_cell_run, run_cell, share_teacher_outputs
from flows.grid import _RUNNER
from flows.preflight import grid_config
from tasks import tracking
from tasks.aggregate import ablation_report_task
from tasks.students import student_task

SWEEPS: dict[str, tuple[str, float | None, dict[str, dict[str, Any]]]] = {
    "distillation": (
        "kd_full",
        None,
        {
            f"T{t:g}-kd{w:g}": {"kd.temperature": t, "kd.kd_weight": w}
            for t, w in [(1.0, 0.3), (2.0, 0.5), (3.0, 0.7), (3.0, 0.8), (4.0, 0.9)]
        },
    ),
    "student_construction": (
        "kd_full",
        None,
        {mode: {"student.layer_selection": mode} for mode in ("first", "middle", "last", "mixed")},
    ),
    "lora_rank": (
        "kd_lora",
        None,
        {f"r{r}": {"lora.rank": r, "lora.lora_alpha": 2 * r} for r in (16, 32, 64, 128)},
    ),
    "schedule": (
        "budgeted",
        0.0,
        {
            "none": {"budget.schedule_start": 0.0, "budget.schedule_end": 0.0},
            "short-decay": {"budget.schedule_start": 0.1, "budget.schedule_end": 0.3},
            "long-decay": {"budget.schedule_start": 0.1, "budget.schedule_end": 0.9},
        },
    ),
    "compression": (
        "budgeted",
        0.4,
        {
            f"rank{r:g}-svd{s:g}": {"compression.tau_rank": r, "compression.tau_svd": s}
            for r in (0.3, 0.5, 0.7)
            for s in (0.3, 0.5, 0.7)
        },
    ),
}


def _variant_context(ctx: GridContext, changes: dict[str, Any]) -> GridContext:
    """The grid context with a variant's config (and its own student if that changed)."""
    cfg = apply_overrides(ctx.cfg, changes)
    variant = dataclasses.replace(ctx, config=cfg.model_dump(mode="json"))
    if cfg.student != ctx.cfg.student:
        smallest = min(ctx.teacher_refs.values(), key=lambda t: t["num_params"])
        variant.student_ref = ctx.task(student_task)(
            ctx.output_dir, variant.config["student"], smallest, ctx.tokenizer
        )
    return variant


@flow(name="ablations", task_runner=_RUNNER, log_prints=True)
def ablations(
    config: str = "tiny",
    output_dir: str | None = None,
    sweeps: list[str] | None = None,
    teacher: str | None = None,
    train_tokens: int | None = None,
    overrides: dict[str, Any] | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """Run the selected sweeps (default: all) distilling from ``teacher`` (default: the
    smallest rung, as in the paper); ``train_tokens`` shortens every run."""
    tune_cpu_allocator()  # this process trains and evaluates: keep freed memory
    unknown = set(sweeps or []) - set(SWEEPS)
    if unknown:
        raise ConfigError(f"unknown sweep(s) {sorted(unknown)}; known: {', '.join(SWEEPS)}")
    extra = dict(overrides or {})
    if train_tokens is not None:
        extra["train.total_tokens"] = train_tokens
    cfg, preset = grid_config(config, extra, None, None, None)
    out = str(Path(output_dir or Path("outputs") / f"{preset}-ablations").resolve())
    ctx = GridContext.start(cfg, preset, out, force or [], grid_id=str(flow_run.get_id()))
    failed = True
    try:
        name = teacher or min(ctx.teacher_refs.values(), key=lambda t: t["num_params"])["name"]
        teacher_ref = ctx.teacher_ref(name)
        planned = []  # (sweep, variant, variant context, spec)
        for sweep in sweeps or list(SWEEPS):
            method, fraction, variants = SWEEPS[sweep]
            for variant, changes in variants.items():
                spec = {
                    "teacher": name,
                    "method": method,
                    "final_fraction": fraction,
                    "seed": cfg.pipeline.seeds[0],
                    "label": f"ablation/{sweep}/{variant}",
                }
                planned.append((sweep, variant, _variant_context(ctx, changes), spec))
        status.get(ctx.grid_id).total_cells = len(planned)
        run_ids = {spec["label"]: open_cell_run(v_ctx, spec) for *_, v_ctx, spec in planned}
        cells = [(v_ctx, spec) for *_, v_ctx, spec in planned]
        stores = share_teacher_outputs(cells, teacher_ref, run_ids)  # one teacher: DESIGN §6a
        rows = []
        for sweep, variant, v_ctx, spec in planned:
            label = spec["label"]
            cell = run_cell(v_ctx, spec, teacher_ref, run_ids[label], stores.get(label))
            rows.append({"sweep": sweep, "variant": variant, **cell})
        report = ablation_report_task(out, [r for r in rows if r["status"] == "ok"])
        failures = [r["label"] for r in rows if r["status"] != "ok"]
        failed = bool(failures)
        if failures:
            raise RuntimeError(f"{len(failures)} ablation cell(s) failed: {', '.join(failures)}")
        return {"output_dir": out, "report": report}
    finally:
        status.finish(ctx.grid_id)
        tracking.close_run(ctx.parent_run_id, failed=failed)
