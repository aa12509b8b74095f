"""Training progress as log lines a person can follow in the Prefect UI (and in a terminal
without a progress bar): one line per training logging interval, named by the cell (the UI
cuts the task run's name it shows beside the line)::

    tiny-s/budgeted-F0.40/s0 distill: step 40/97 (41%) · loss 3.214 · 12,345 tok/s
        · dense 0.62 · ETA 0:12

A :class:`bl_core.tracking.MetricsLogger`, so the trainer reports through it unchanged.
Where a terminal shows a progress bar (stderr is a TTY) the lines go to the Prefect API
only: printed as well, they would break the bar's line every interval.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.loggers import PrefectLogAdapter

# A child of "prefect.extra", whose only handler is the API's (logging.yml of Prefect 3).
_API_ONLY_LOGGER = "prefect.extra.training"
_STAGE_VERBS = {"prepare-teacher": "pretrain"}
# The top-level flow run of the grid in this process: stage progress is logged there so
# the grid's own page in the Prefect UI shows every cell's progress, not only a sub-flow's.
_GRID_FLOW_RUN_ID: str | None = None


def set_grid_flow_run(flow_run_id: str | None) -> None:
    """Send stage progress of this process to ``flow_run_id``'s logs (the grid's run)."""
    global _GRID_FLOW_RUN_ID
    _GRID_FLOW_RUN_ID = flow_run_id


def grid_logger() -> logging.LoggerAdapter | logging.Logger:
    """The current run's Prefect logger (flow or task), or a plain logger outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks.progress")


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_label(stage: str, run_name: str) -> str:
    """``distill`` + ``distill-tiny-s/kd_lora/s0`` -> ``tiny-s/kd_lora/s0 distill``."""
    label = run_name.removeprefix(f"{stage}-")
    return f"{label} {_STAGE_VERBS.get(stage, stage)}"


def stage_logger(api_only: bool = False) -> logging.LoggerAdapter | logging.Logger:
    """The running stage's log, shown on the grid's flow run (and printed, unless
    ``api_only``); outside a Prefect task, a plain logger. Lines a cohort's CPU lanes
    print are relayed here, printed too: a lane shows no progress bar."""
    if TaskRunContext.get() is None:
        return logging.getLogger("tasks.progress")
    run_logger = get_run_logger()
    extra = dict(getattr(run_logger, "extra", {}) or {})
    if _GRID_FLOW_RUN_ID:
        extra["flow_run_id"] = _GRID_FLOW_RUN_ID
    name = _API_ONLY_LOGGER if api_only else "prefect.task_runs"
    return PrefectLogAdapter(logging.getLogger(name), extra)


class ProgressLogger:
    """Progress lines of one training stage (see the module docstring)."""

    def __init__(self, label: str, logger: logging.LoggerAdapter | logging.Logger) -> None:
        self.label = label  # the stage: "tiny-s/kd_lora/s0 distill"
        self.logger = logger
        self.total_steps: int | None = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first report

    @classmethod
    def for_current_stage(cls, label: str | None = None) -> ProgressLogger:
        """Named ``label``, by default after the running Prefect task (``distill-<cell>``
        -> ``<cell> distill``); logs to the API only when a terminal shows a progress bar."""
        ctx = TaskRunContext.get()
        if ctx is None:
            return cls(label or "training", logging.getLogger("tasks.progress"))
        label = label or stage_label(ctx.task.name, ctx.task_run.name)
        return cls(label, stage_logger(api_only=sys.stderr.isatty()))

    def log_params(self, params: dict[str, Any]) -> None:
        if "total_steps" in params:
            self.total_steps = int(params["total_steps"])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logger.info(f"{self.label}: {self.line(metrics, step)}")

    def line(self, metrics: dict[str, float], step: int, now: float | None = None) -> str:
        """The progress line for ``metrics`` logged at ``step``."""
        now = time.monotonic() if now is None else now
        if self._first is None:
            self._first = (step, now)
        parts = [f"step {step}"]
        if self.total_steps:
            parts[0] += f"/{self.total_steps} ({100 * step / self.total_steps:.0f}%)"
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.3f}")
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if "dense_fraction" in metrics:
            parts.append(f"dense {metrics['dense_fraction']:.2f}")
        first_step, first_time = self._first
        if self.total_steps and step > first_step:
            rate = (now - first_time) / (step - first_step)
            parts.append(f"ETA {format_duration(rate * (self.total_steps - step))}")
        return " · ".join(parts)
