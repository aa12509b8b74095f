"""Report honesty (issue 17, item 6): the cells that failed are listed in report.md (which
cell, which stage, the error's first line), and a run whose cells all failed never
replaces a table that had rows with an empty one — its report goes to ``report/partial/``
beside the kept one, and says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bl_core.io import atomic_write_text

PARTIAL_DIR = "partial"


def failure_rows(cells: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``{"cell", "stage", "error"}`` per failed cell, the error cut to its first line."""
    rows = []
    for cell in cells:
        if cell.get("status") == "ok":
            continue
        error = str(cell.get("error") or "unknown error")
        stage, _, rest = error.partition(": ")
        known = rest and " " not in stage and not stage.endswith(")")
        rows.append(
            {
                "cell": cell.get("label", "?"),
                "stage": stage if known else "?",
                "error": (rest if known else error).strip().splitlines()[0][:300]
                if error.strip()
                else "unknown error",
            }
        )
    return rows


def failures_markdown(failures: list[dict[str, str]]) -> str:
    if not failures:
        return ""
    lines = [
        "",
        f"## Failed cells ({len(failures)})",
        "",
        "These cells are missing from the tables above; rerun the grid to retry them "
        "(finished stages come from cache).",
        "",
        "| cell | stage | error |",
        "|---|---|---|",
    ]
    for row in failures:
        error = row["error"].replace("|", "\\|")
        lines.append(f"| {row['cell']} | {row['stage']} | {error} |")
    return "\n".join(lines) + "\n"


def _table_rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path, index_col=0))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return 0


def report_target(report_dir: Path, cells: list[dict[str, Any]], order: list[str] | None) -> Path:
    """Where this report goes: ``report_dir``, or ``report_dir/partial`` when it would
    replace a Table 2 that has rows with one that has none."""
    from tasks.report_tables import table2, teacher_names

    old_rows = _table_rows(report_dir / "table2.csv")
    if old_rows == 0:
        return report_dir
    try:
        new_rows = len(table2(cells, teacher_names(cells, order)))
    except Exception:  # noqa: BLE001 - no cells: no table
        new_rows = 0
    return report_dir if new_rows else report_dir / PARTIAL_DIR


def finish_report(report_md: str | Path, failures: list[dict[str, str]], partial: bool) -> None:
    """Append the failed cells (and, for a partial report, where the kept one is)."""
    path = Path(report_md)
    text = path.read_text()
    if partial:
        text = (
            "> **Partial report.** Every cell of this run failed, so its tables are empty; "
            "the previous report in `../` was kept and is not replaced.\n\n" + text
        )
    atomic_write_text(path, text + failures_markdown(failures))
