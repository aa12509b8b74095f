"""The distillation cells of one teacher trained in lockstep, sharing each batch's teacher
forward (DESIGN §6a, the exact form of shared teacher outputs).

    step t:  cell 1 (seed s) ── batch(t, s) ──► teacher forward ──► logits ──► its own step
             cell 2 (seed s) ── batch(t, s) ──────────── the same logits ──► its own step
             cell 3 (seed s') ─ batch(t, s') ─► teacher forward ──► ...

Which sequences a step reads depends only on the step and the seed (bl_core.sampling), so
every cell of one seed asks for the same batch, and a cell's token budget only decides when
it stops. Each cell is exactly the run :func:`bl_core.training.train` would make alone: its
own model, optimizer, controller, checkpoints and metrics, and its own RNG stream (restored
before and saved after each of its steps). Its weights are therefore bit-identical to a solo
run's. A cell that fails is reported and dropped; the others go on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from bl_core.config import BudgetedLoRAConfig, Method
from bl_core.interrupt import Interrupted
from bl_core.packing import PackedDataset
from bl_core.teacher_outputs import SharedTeacher
from bl_core.tracking import MetricsLogger
from bl_core.train_state import capture_rng, restore_rng
from bl_core.training import _precision, _vocab_check, place_teacher, read_summary, start_run


@dataclass
class CohortMember:
    """One cell of a cohort: a student to train by ``method`` into ``run_dir``."""

    label: str
    student: nn.Module
    method: Method
    cfg: BudgetedLoRAConfig
    run_dir: Path
    logger: MetricsLogger | None = None


@dataclass
class _Active:
    label: str
    run: Any  # bl_core.training._Run
    rng: dict[str, Any]


def train_cohort(
    members: Sequence[CohortMember],
    teacher: nn.Module,
    data: PackedDataset,
    *,
    vocab_size: int,
    on_step: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, dict[str, Any] | Exception], dict[str, int]]:
    """Train every member not yet finished; return ``(results, counts)``.

    ``results[label]`` is the run's summary (also for members finished before) or the
    exception that ended it. ``counts``: teacher forwards computed and requested (a solo
    run computes one per request). ``on_step(label, step)`` follows every step.
    """
    results: dict[str, dict[str, Any] | Exception] = {}
    active: list[_Active] = []
    seeds = {m.cfg.train.seed for m in members}
    accum = max((m.cfg.train.grad_accum_steps for m in members), default=1)
    shared: SharedTeacher | None = None
    for member in sorted(members, key=lambda m: m.cfg.train.seed):  # one seed's cells together
        done = read_summary(member.run_dir)
        if done is not None:
            results[member.label] = done
            continue
        try:
            _vocab_check(member.student, teacher, vocab_size)
            if shared is None:  # the device accelerate gives every run of this process
                precision = member.cfg.train.mixed_precision
                # An Accelerator, not a bare PartialState: created first, that would set up
                # a single-process state under torchrun on CPU.
                device = Accelerator(mixed_precision=_precision(precision), cpu=None).device
                placed = place_teacher(teacher, device, precision)
                shared = SharedTeacher(placed, capacity=accum * len(seeds))
            run = start_run(
                member.student,
                None,
                member.method,
                data,
                member.cfg,
                member.run_dir,
                vocab_size=vocab_size,
                logger=member.logger,
                outputs=shared,
            )
            active.append(_Active(member.label, run, capture_rng()))
        except Exception as err:  # noqa: BLE001 - this cell fails, the cohort goes on
            results[member.label] = err
    _lockstep(active, results, on_step)
    counts = {"forwards": 0, "requests": 0}
    if shared is not None:
        counts = {"forwards": shared.num_forwards, "requests": shared.num_requests}
    return results, counts


def cohort_name(labels: list[str]) -> str:
    """The cells of a cohort in one name, for its progress bar:
    ``tiny-s/{kd_full,budgeted-F0.40}/s0`` (cells of one teacher and seed), else the labels."""
    parts = [label.split("/") for label in labels]
    if len(parts) > 1 and all(len(p) == 3 for p in parts):
        if len({p[0] for p in parts}) == 1 and len({p[2] for p in parts}) == 1:
            return f"{parts[0][0]}/{{{','.join(p[1] for p in parts)}}}/{parts[0][2]}"
    return ", ".join(labels)


def _lockstep(
    active: list[_Active],
    results: dict[str, dict[str, Any] | Exception],
    on_step: Callable[[str, int], None] | None,
) -> None:
    """Step every active member once per round until all are finished or failed."""
    remaining = sum(a.run.total_steps - a.run.step for a in active)
    main = all(a.run.acc.is_main_process for a in active)
    bar = tqdm(
        total=remaining,
        desc=f"{cohort_name([a.label for a in active])} distill",
        unit="step",
        disable=not sys.stderr.isatty() or not main,
    )
    for member in active:
        member.run._window = (0.0, member.run.tokens, 0.0)
    while active:
        for member in list(active):
            restore_rng(member.rng)
            try:
                member.run.advance(None if on_step is None else _bind(on_step, member.label))
                bar.update(1)
                if member.run.done:
                    results[member.label] = member.run.finish()
                    active.remove(member)
                else:
                    member.rng = capture_rng()
            except Interrupted:
                bar.close()
                _checkpoint_others(active, member)
                raise  # a stop request ends the whole cohort, each member checkpointed
            except Exception as err:  # noqa: BLE001 - this cell fails, the cohort goes on
                results[member.label] = err
                active.remove(member)
    bar.close()


def _checkpoint_others(active: list, stopped: Any) -> None:
    """Checkpoint the members a stop request caught between their steps (each with its
    own RNG stream, as it would have checkpointed itself)."""
    for member in active:
        run = member.run
        if member is not stopped and run.step and run.step % run.tc.checkpoint_every:
            restore_rng(member.rng)
            run.checkpoint()


def _bind(on_step: Callable[[str, int], None], label: str) -> Callable[[int], None]:
    return lambda step: on_step(label, step)
