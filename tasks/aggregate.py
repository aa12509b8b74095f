"""Stage: aggregation — the paper's Tables 2, 8, 9 and figures (DESIGN §10), written to
``<output_dir>/report/``; then published (every grid run, cached or not) as Prefect
artifacts and into the grid's parent MLflow run.

The stage is cached like the others: its inputs are the cells' results (without their
per-run MLflow ids), so an unchanged rerun reuses the report. Publishing is not a stage:
it attaches the report to *this* flow run and *this* parent run, which a cached stage
cannot do.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bl_core.io import atomic_write_json, atomic_write_text
from tasks import tracking
from tasks.common import payload_hash, record_execution
from tasks.report_failures import PARTIAL_DIR, finish_report, report_target
from tasks.report_tables import (
    display_headers,
    format_table,
    format_table8,
    markdown_table,
    write_report,
)

# Per-run bookkeeping in a cell: not part of the report's inputs (changes every run).
VOLATILE_CELL_KEYS = ("mlflow_run_id",)
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def report_inputs(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells as the report sees them: per-run bookkeeping dropped, so an unchanged
    rerun has the same cache key."""
    return [{k: v for k, v in cell.items() if k not in VOLATILE_CELL_KEYS} for cell in cells]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows (NaN -> None) for a Prefect table artifact."""
    flat = frame.reset_index()
    return flat.astype(object).where(pd.notna(flat), None).to_dict(orient="records")


@task(name="aggregate-report", task_run_name="aggregate-report")
def aggregate_task(
    output_dir: str,
    cells: list[dict[str, Any]],
    teacher_order: list[str] | None = None,
    failures: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Write the report; return the paths of its files and the hash of its inputs, also
    written to ``report/inputs.sha256`` (:func:`is_current`). ``failures``: the failed
    cells, listed in report.md; a report whose Table 2 would be empty where the existing
    one has rows goes to ``report/partial/`` instead (tasks/report_failures.py)."""
    record_execution(output_dir, "aggregate-report", "report")
    report_dir = report_target(Path(output_dir) / "report", cells, teacher_order)
    files = write_report(cells, report_dir, teacher_order)
    finish_report(files["report.md"], failures or [], report_dir.name == PARTIAL_DIR)
    atomic_write_json(report_dir / "cells.json", cells)  # every figure, machine-readable
    files["cells.json"] = str(report_dir / "cells.json")
    digest = payload_hash({"cells": cells, "teacher_order": teacher_order, "failed": failures})
    atomic_write_text(report_dir / "inputs.sha256", digest)
    return {
        "report_dir": str(report_dir),
        "report_md": files["report.md"],
        "table2_md": files["table2.md"],
        "files": files,
        "inputs_hash": digest,
    }


def is_current(report: dict[str, Any]) -> bool:
    """Whether ``report/`` still holds this (cached) report: its files exist and no other
    grid's report was written over them since (one ``report/`` per output directory)."""
    marker = Path(report["report_dir"]) / "inputs.sha256"
    if not marker.is_file() or marker.read_text() != report.get("inputs_hash"):
        return False
    return all(Path(path).is_file() for path in report["files"].values())


def embed_images(markdown: str, base_dir: str | Path) -> str:
    """Markdown with every relative ``![caption](figure.png)`` replaced by a ``data:`` URI
    of that file: the Prefect UI has no file server, so a relative link is a broken image."""

    def inline(match: re.Match[str]) -> str:
        path = Path(base_dir) / match.group(2)
        if not path.is_file():
            return f"*{match.group(1)}: {match.group(2)} is missing*"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(inline, markdown)


def display_tables(report_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Tables 2 and 8 as the report prints them (rounded strings, "–" where missing),
    from the numeric CSVs."""
    report_dir = Path(report_dir)
    t2 = pd.read_csv(report_dir / "table2.csv", index_col=0)
    t8 = pd.read_csv(report_dir / "table8.csv", index_col=0)
    return {
        "table-2": display_headers(format_table(t2)),
        "table-8": display_headers(format_table8(t8)),
    }


def publish_report(report: dict[str, Any], parent_run_id: str | None) -> str | None:
    """Attach the written report to the current flow run (Prefect artifacts: the report
    with its figures embedded, Tables 2 and 8 rounded) and to the parent MLflow run;
    returns the MLflow URL of the grid's runs, side by side."""
    report_dir = Path(report["report_dir"])
    tables = display_tables(report_dir)
    descriptions = {
        "table-2": "Table 2: PPL per teacher, train compute, speedups",
        "table-8": "Table 8: compressed structure per budget",
    }
    for key, frame in tables.items():
        create_table_artifact(key=key, table=_records(frame), description=descriptions[key])
    markdown = embed_images(Path(report["report_md"]).read_text(), report_dir)
    create_markdown_artifact(key="grid-report", markdown=markdown, description="Grid report")
    if not parent_run_id:
        return None
    return tracking.log_report(parent_run_id, report["files"], tables["table-2"])


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
