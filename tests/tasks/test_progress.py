"""Progress lines of a training stage (tasks/progress.py)."""

from __future__ import annotations

import logging

from tasks.progress import ProgressLogger, format_duration, stage_label


def test_stage_labels_name_the_cell() -> None:
    assert stage_label("distill", "distill-tiny-m/budgeted-F0.40/s0") == (
        "tiny-m/budgeted-F0.40/s0 distill"
    )
    assert stage_label("prepare-teacher", "prepare-teacher-tiny-s") == "tiny-s pretrain"


def test_durations() -> None:
    assert [format_duration(s) for s in (7.4, 723, 3723)] == ["0:07", "12:03", "1:02:03"]


def test_a_line_per_interval_with_step_loss_speed_and_eta(caplog) -> None:
    progress = ProgressLogger("tiny-s/kd_lora/s0 distill", logging.getLogger("test.progress"))
    progress.log_params({"method": "kd_lora", "total_steps": 100})
    first = progress.line({"loss": 3.21449, "tokens_per_s": 12345.6}, 10, now=0.0)
    later = progress.line({"loss": 2.5, "tokens_per_s": 12000.0, "dense_fraction": 0.62}, 20, 5.0)
    assert first == "step 10/100 (10%) · loss 3.214 · 12,346 tok/s"
    assert later == "step 20/100 (20%) · loss 2.500 · 12,000 tok/s · dense 0.62 · ETA 0:40"
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress.log_metrics({"loss": 2.0}, 30)
    assert caplog.messages[-1].startswith("tiny-s/kd_lora/s0 distill: step 30/100 (30%)")
