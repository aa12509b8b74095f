"""Report honesty (issue 17, item 6): failed cells are listed; an all-failed run does not
replace a table that had rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.aggregate import aggregate_task
from tasks.report_failures import failure_rows

GOOD = {"teacher": "t", "method": "kd_lora", "ppl": 20.0, "status": "ok", "label": "t/kd_lora/s0"}
FAILED = {
    "teacher": "t",
    "method": "budgeted",
    "final_fraction": 0.0,
    "status": "failed",
    "label": "t/budgeted-F0.00/s0",
    "error": "icl: Failed: Task run encountered an exception RuntimeError: injected\nmore",
}


def test_failure_rows_name_cell_stage_and_first_line():
    rows = failure_rows([GOOD, FAILED, {"label": "x", "status": "failed", "error": "Boom()"}])
    assert rows[0] == {
        "cell": "t/budgeted-F0.00/s0",
        "stage": "icl",
        "error": "Failed: Task run encountered an exception RuntimeError: injected",
    }
    assert rows[1] == {"cell": "x", "stage": "?", "error": "Boom()"}


def test_failed_cells_are_listed_in_the_report(tmp_path):
    report = aggregate_task.fn(str(tmp_path), [GOOD], None, failure_rows([GOOD, FAILED]))
    text = Path(report["report_md"]).read_text()
    assert "## Failed cells (1)" in text
    assert "| t/budgeted-F0.00/s0 | icl | Failed: Task run encountered" in text


def test_an_all_failed_run_keeps_the_table_that_had_rows(tmp_path):
    good = aggregate_task.fn(str(tmp_path), [GOOD])
    before = Path(good["table2_md"]).read_text()
    assert len(pd.read_csv(tmp_path / "report" / "table2.csv", index_col=0)) > 0
    partial = aggregate_task.fn(str(tmp_path), [], None, failure_rows([FAILED]))
    assert Path(good["table2_md"]).read_text() == before  # kept
    assert Path(partial["report_dir"]) == tmp_path / "report" / "partial"
    text = Path(partial["report_md"]).read_text()
    assert text.startswith("> **Partial report.**") and "## Failed cells (1)" in text
