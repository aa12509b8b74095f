"""What a grid tells a person while it runs, in the terminal and on its Prefect flow-run page:

    cell 4 of 13: tiny-s/kd_lora/s0 · 4:41 elapsed · ETA 2:10
    13 of 53 stages from cache, 40 ran · 13 cells in 6:58

One :class:`GridStatus` per grid run, found by the grid's id: the teacher-branch sub-flows
rebuild their context from a JSON dict and run in the same process, so the counts live here,
not in that dict. Lines are logged with the grid's own flow-run logger, so they land on the
grid's page in the Prefect UI whichever sub-flow is running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prefect.logging.loggers import PrefectLogAdapter

from tasks.common import read_executions
from tasks.progress import format_duration, grid_logger


@dataclass
class GridStatus:
    """Counts of one grid run: cells planned and finished, stages called and executed."""

    output_dir: str
    logger: logging.LoggerAdapter | logging.Logger
    total_cells: int = 0
    stages_called: int = 0
    started: float = field(default_factory=lambda: time.monotonic())
    executions_before: int = 0
    cells: list[tuple[str, float]] = field(default_factory=list)  # label, seconds
    _cell_start: tuple[str, float] | None = None
    _first_start: float | None = None

    def executions(self) -> int:
        """Stages that ran (not served from cache) in this process since this grid run
        started: another worker on the same store appends its own (issue 17)."""
        since = read_executions(self.output_dir)[self.executions_before :]
        return sum(1 for e in since if e.get("pid", os.getpid()) == os.getpid())

    def cell_started(self, label: str) -> None:
        done = len(self.cells)
        parts = [f"cell {done + 1} of {self.total_cells}: {label}"] if self.total_cells else []
        parts = parts or [f"cell {done + 1}: {label}"]
        if done:
            parts.append(f"{format_duration(time.monotonic() - self.started)} elapsed")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        self.logger.info(" · ".join(parts))
        self._cell_start = (label, time.monotonic())
        if self._first_start is None:
            self._first_start = self._cell_start[1]

    def cell_finished(self, label: str) -> None:
        if self._cell_start is None or self._cell_start[0] != label:
            return
        self.cells.append((label, time.monotonic() - self._cell_start[1]))
        self._cell_start = None

    def eta(self) -> float | None:
        """Remaining cells x the wall clock per finished cell since the first one started
        (a teacher's cohort trains its cells before they finish one by one; cached cells
        count too, or a rerun with one changed budget would promise minutes for seconds)."""
        remaining = self.total_cells - len(self.cells)
        if not self.cells or remaining <= 0 or self._first_start is None:
            return None
        return remaining * (time.monotonic() - self._first_start) / len(self.cells)

    def summary(self) -> dict[str, Any]:
        ran = self.executions()
        return {
            "stages": self.stages_called,
            "from_cache": max(0, self.stages_called - ran),
            "ran": ran,
            "cells": len(self.cells),
            "seconds": time.monotonic() - self.started,
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (
            f"{s['from_cache']} of {s['stages']} stages from cache, {s['ran']} ran · "
            f"{s['cells']} cells in {format_duration(s['seconds'])}"
        )


_GRIDS: dict[str, GridStatus] = {}
_LOCK = threading.Lock()


def start(grid_id: str, output_dir: str) -> GridStatus:
    """Register a grid run; call in its top-level flow (its logger is the grid's)."""
    logger = grid_logger()
    if isinstance(logger, PrefectLogAdapter):  # a plain adapter: usable from any sub-flow
        logger = PrefectLogAdapter(logger.logger, dict(logger.extra or {}))
    status = GridStatus(output_dir, logger, executions_before=len(read_executions(output_dir)))
    with _LOCK:
        _GRIDS[grid_id] = status
    return status


def get(grid_id: str) -> GridStatus | None:
    with _LOCK:
        return _GRIDS.get(grid_id)


def finish(grid_id: str) -> dict[str, Any] | None:
    """Log the stage summary, forget the grid; returns its summary."""
    with _LOCK:
        status = _GRIDS.pop(grid_id, None)
    if status is None:
        return None
    status.logger.info(status.summary_line())
    return status.summary()


def log(grid_id: str, message: str) -> None:
    """A status line on the grid's page (and terminal), e.g. before a silent phase."""
    status = get(grid_id)
    (status.logger if status else grid_logger()).info(message)
