"""Publishing the report (tasks/aggregate.py): images the Prefect UI can show, a cache key
an unchanged rerun reproduces, tables rounded as the report prints them."""

from __future__ import annotations

import base64
import re

from tasks.aggregate import display_tables, embed_images, report_inputs
from tasks.report_tables import write_report


def test_embedded_report_has_no_relative_image_links(tmp_path) -> None:
    paths = write_report([], tmp_path)
    markdown = embed_images((tmp_path / "report.md").read_text(), tmp_path)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 3 and all(link.startswith("data:image/png;base64,") for link in links)
    first = base64.b64decode(links[0].split(",", 1)[1])
    assert first == (tmp_path / "pareto.png").read_bytes() and paths["pareto.png"]


def test_a_missing_figure_is_said_not_linked(tmp_path) -> None:
    assert embed_images("![Pareto](pareto.png)", tmp_path) == "*Pareto: pareto.png is missing*"


def test_report_inputs_drop_per_run_ids() -> None:
    cells = [{"label": "a", "ppl": 3.0, "mlflow_run_id": "abc"}]
    assert report_inputs(cells) == [{"label": "a", "ppl": 3.0}]
    assert cells[0]["mlflow_run_id"] == "abc"  # the caller's cells are left alone


def test_display_tables_are_rounded_strings_with_short_headers(tmp_path) -> None:
    cell = {"teacher": "t", "method": "kd_lora", "ppl": 216.92345678912345,
            "speed": {"modules_speedup_measured": 1.0123456789}}  # fmt: skip
    write_report([cell], tmp_path)
    table = display_tables(tmp_path)["table-2"]
    assert table.loc["KD LoRA", "PPL t"] == "216.92"
    assert table.loc["KD LoRA", "Measured ×"] == "1.01×"
    assert max(len(str(c)) for c in table.columns) <= 12


def test_a_report_overwritten_by_another_grid_is_not_current(tmp_path) -> None:
    from tasks.aggregate import aggregate_task, is_current

    cell = {"teacher": "t", "method": "kd_full", "ppl": 20.0}
    first = aggregate_task.fn(str(tmp_path), [cell])
    assert is_current(first)
    aggregate_task.fn(str(tmp_path), [cell | {"ppl": 30.0}])  # another grid, same report/
    assert not is_current(first)  # a cache hit on `first` must be recomputed
