"""Stage: aggregation — the paper's Tables 2, 8, 9 and figures (DESIGN §10), written to
``<output_dir>/report/`` and published as Prefect artifacts and MLflow artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.common import record_execution
from tasks.report_tables import table2, table8, write_report


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows (NaN -> None) for a Prefect table artifact."""
    flat = frame.reset_index()
    return flat.astype(object).where(pd.notna(flat), None).to_dict(orient="records")


@task(name="aggregate-report", task_run_name="aggregate-report")
def aggregate_task(
    output_dir: str,
    cells: list[dict[str, Any]],
    parent_run_id: str | None = None,
    teacher_order: list[str] | None = None,
) -> dict[str, Any]:
    """Write the report; return the paths of its files."""
    record_execution(output_dir, "aggregate-report", "report")
    report_dir = Path(output_dir) / "report"
    files = write_report(cells, report_dir, teacher_order)
    create_table_artifact(
        key="table-2",
        table=_records(table2(cells, teacher_order)),
        description="Table 2: PPL per teacher, train compute, speedups",
    )
    create_table_artifact(
        key="table-8",
        table=_records(table8(cells, teacher_order)),
        description="Table 8: compressed structure per budget",
    )
    create_markdown_artifact(
        key="grid-report",
        markdown=Path(files["report.md"]).read_text(),
        description="Budgeted LoRA grid report",
    )
    if parent_run_id:
        for path in files.values():
            tracking.log_artifact(parent_run_id, path, "report")
    return {
        "report_dir": str(report_dir),
        "report_md": files["report.md"],
        "table2_md": files["table2.md"],
        "files": files,
    }
