"""The ``token-scaling`` flow: how far Budgeted LoRA trails KD LoRA as distillation gets
more optimizer steps (issue "Fidelity"; DESIGN §4: dense paths are removed in the decay
window, and the student needs steps after it to recover).

One teacher, KD LoRA and Budgeted at each final fraction, at several distillation token
budgets, for several training seeds; every cell's perplexity (compressed student), and
per budget and seed the ratio PPL(Budgeted F) / PPL(KD LoRA)::

    budgets x seeds x {kd_lora, budgeted F...}  ──►  scaling.csv / scaling.md / scaling.png

All cells of the teacher train in one lockstep cohort (one teacher forward per batch; a
cell's budget only decides when it stops), and data, tokenizer and teachers come from the
same cached stages as the grid's.
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
from tasks.scaling_report import scaling_report_task

DEFAULT_STEPS = (50, 100, 200, 400, 800)


def scaling_label(method: str, fraction: float | None, steps: int, seed: int) -> str:
    budget = f"-F{fraction:.2f}" if method == "budgeted" else ""
    return f"scaling/{method}{budget}/steps{steps}/s{seed}"


@flow(name="token-scaling", task_runner=_RUNNER, log_prints=True)
def token_scaling(
    config: str = "tiny",
    output_dir: str | None = None,
    teacher: str | None = None,
    steps: list[int] | None = None,
    budgets: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """KD LoRA and Budgeted (``budgets``, default the preset's) from ``teacher`` (default
    the smallest rung) at each of ``steps`` optimizer steps (default 50 ... 800) and
    ``seeds`` (default 0, 1); perplexity only. Writes ``report/scaling.{csv,md,png}``."""
    tune_cpu_allocator()  # this process trains and evaluates: keep freed memory
    steps = sorted(set(steps or DEFAULT_STEPS))
    if not steps or steps[0] < 1:
        raise ConfigError(f"steps={steps}: need at least one optimizer step count >= 1")
    cfg, preset = grid_config(config, overrides, None, budgets, seeds or [0, 1])
    fractions = list(cfg.grid.budgets)
    if not fractions:
        raise ConfigError("grid.budgets is empty: token-scaling compares Budgeted to KD LoRA")
    out = str(Path(output_dir or Path("outputs") / f"{preset}-scaling").resolve())
    ctx = GridContext.start(cfg, preset, out, force or [], grid_id=str(flow_run.get_id()))
    failed = True
    try:
        name = teacher or min(ctx.teacher_refs.values(), key=lambda t: t["num_params"])["name"]
        teacher_ref = ctx.teacher_ref(name)
        tokens_per_step = (
            cfg.train.micro_batch_size
            * ctx.train_data["seq_len"]
            * cfg.train.grad_accum_steps
            * cfg.train.num_processes
        )
        planned = []
        for count in steps:
            step_ctx = dataclasses.replace(
                ctx,
                config=apply_overrides(
                    ctx.cfg, {"train.total_tokens": count * tokens_per_step}
                ).model_dump(mode="json"),
            )
            for seed in cfg.pipeline.seeds:
                for method, fraction in [("kd_lora", None), *(("budgeted", f) for f in fractions)]:
                    spec = {
                        "teacher": name,
                        "method": method,
                        "final_fraction": fraction,
                        "seed": seed,
                        "steps": count,
                        "label": scaling_label(method, fraction, count, seed),
                    }
                    planned.append((step_ctx, spec))
        status.get(ctx.grid_id).total_cells = len(planned)
        run_ids = {spec["label"]: open_cell_run(c, spec) for c, spec in planned}
        stores = share_teacher_outputs(planned, teacher_ref, run_ids)
        cells = [
            run_cell(
                c,
                spec,
                teacher_ref,
                run_ids[spec["label"]],
                stores.get(spec["label"]),
                evaluations=("perplexity",),
            )
            for c, spec in planned
        ]
        ok = [cell for cell in cells if cell["status"] == "ok"]
        report = scaling_report_task(out, ok, name, preset)
        failures = [cell["label"] for cell in cells if cell["status"] != "ok"]
        failed = bool(failures)
        if failures:
            raise RuntimeError(f"{len(failures)} scaling cell(s) failed: {', '.join(failures)}")
        return {"output_dir": out, "report": report}
    finally:
        status.finish(ctx.grid_id)
        tracking.close_run(ctx.parent_run_id, failed=failed)
