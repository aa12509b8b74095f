"""What the grid says while it runs (flows/status.py): cell k of N, an ETA from the cells
done so far, and how much came from cache."""

from __future__ import annotations

import logging

from flows.status import GridStatus
from tasks.common import record_execution


def test_cell_lines_eta_and_summary(tmp_path, caplog, monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr("flows.status.time.monotonic", lambda: now[0])
    status = GridStatus(str(tmp_path), logging.getLogger("test.status"), total_cells=4)
    status.stages_called = 6
    with caplog.at_level(logging.INFO, logger="test.status"):
        status.cell_started("t/kd_full/s0")
        record_execution(tmp_path, "distill", "t/kd_full/s0")  # one stage ran, five from cache
        now[0] = 10.0
        status.cell_finished("t/kd_full/s0")
        status.cell_started("t/kd_lora/s0")  # 3 cells left at 10 s each
        now[0] = 11.0
        status.cell_finished("t/kd_lora/s0")  # from cache: 1 s
        status.cell_started("t/budgeted-F0.00/s0")
        now[0] = 12.0
    assert caplog.messages == [
        "cell 1 of 4: t/kd_full/s0",
        "cell 2 of 4: t/kd_lora/s0 · 0:10 elapsed · ETA 0:30",
        "cell 3 of 4: t/budgeted-F0.00/s0 · 0:11 elapsed · ETA 0:11",
    ]
    assert status.summary_line() == "5 of 6 stages from cache, 1 ran · 2 cells in 0:12"
