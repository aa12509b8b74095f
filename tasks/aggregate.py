"""Stage: aggregation — the paper's Tables 2, 8, 9 and figures (DESIGN §10), written to
``<output_dir>/report/`` and published as Prefect artifacts and MLflow artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bl_core.io import atomic_write_json, atomic_write_text
from tasks import tracking
from tasks.common import record_execution
from tasks.report_tables import markdown_table, table2, table8, write_report


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
    atomic_write_json(report_dir / "cells.json", cells)  # every figure, machine-readable
    files["cells.json"] = str(report_dir / "cells.json")
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


def ablation_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per ablation variant: quality next to what the variant costs."""
    records = []
    for row in rows:
        train, comp = row.get("train") or {}, row.get("compression") or {}
        records.append(
            {
                "sweep": row["sweep"],
                "variant": row["variant"],
                "method": row["method"],
                "PPL": row.get("ppl"),
                "ICL composite": ((row.get("icl") or {}).get("composite") or {}).get("mean"),
                "Train compute": train.get("train_compute_proxy"),
                "Realised F": train.get("realised_fraction"),
                "Dense kept": comp.get("dense_kept"),
                "Dense SVD": comp.get("dense_svd"),
                "Dense dropped": comp.get("dense_dropped"),
                "Avg rank": comp.get("avg_rank"),
                "Infer speedup (MAC)": comp.get("infer_speedup_mac"),
            }
        )
    return pd.DataFrame.from_records(records)


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@task(name="ablation-report", task_run_name="ablation-report")
def ablation_report_task(output_dir: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``ablations.csv`` and ``ablations.md`` (one table per sweep), published as artifacts."""
    record_execution(output_dir, "ablation-report", "report")
    frame = ablation_frame(rows)
    out = Path(output_dir) / "report"
    sections = ["# Ablations (paper Appendix C)\n"]
    for sweep, part in frame.groupby("sweep", sort=False):
        sections.append(
            f"## {sweep}\n\n"
            + markdown_table(part.drop(columns="sweep").set_index("variant"))
            + "\n"
        )
    markdown = "\n".join(sections)
    atomic_write_text(out / "ablations.csv", frame.to_csv(index=False))
    atomic_write_text(out / "ablations.md", markdown)
    create_markdown_artifact(key="ablations", markdown=markdown, description="Ablation sweeps")
    return {"csv": str(out / "ablations.csv"), "markdown": str(out / "ablations.md")}
