"""What one cell's MLflow run shows, as plain data (no MLflow here; ``tasks.tracking`` logs it).

Metrics are only what a person compares or watches: the headline numbers and the training
curves. Headline metrics have short, stable names and the report's units, taken from the
report's own row of the cell (``report_tables.results_frame``), so MLflow and the report can
never disagree (KD Full's MAC speedup 1.0 and train compute 1.0 hold by construction there):

| metric               | unit                            | report column            |
|----------------------|---------------------------------|--------------------------|
| ``ppl``              | perplexity                      | PPL <teacher>            |
| ``icl_composite``    | % exact match (macro mean)      | Table 9 Composite        |
| ``speedup_mac``      | × (adapted-module MACs)         | Infer speedup (MAC)      |
| ``speedup_measured`` | × (adapted modules, wall clock) | Infer speedup (measured) |
| ``param_reduction``  | % fewer params than LoRA        | Param red. vs LoRA       |
| ``realised_fraction``| dense fraction (budgets only)   | Realised F               |
| ``train_compute``    | proxy, KD Full = 1              | Train compute            |

Values are rounded a digit beyond the report's display precision; training curves are not.

Why so few: the MLflow 3 UI puts every metric prefix (``icl/``, ``speed/``, ``alpha/``...) in
its own chart section, sorted by name, *before* the un-prefixed section, so 84 per-module
``alpha/…``/``rank/…`` histories and ~50 one-value bar charts led every chart page and the
loss curves came last. The per-module histories become a CSV and a heatmap
(:func:`module_history`); every other number of the cell (ICL per task, compression, speed,
training summary) is one table, ``details.json`` (:func:`detail_table`), on the run's
Artifacts tab.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.report_tables import results_frame

MODULE_PREFIXES = ("alpha/", "rank/")
# name -> (results_frame column, scale, decimals)
HEADLINE: dict[str, tuple[str, float, int]] = {
    "ppl": ("ppl", 1.0, 3),
    "icl_composite": ("ICL composite", 100.0, 2),
    "speedup_mac": ("Infer speedup (MAC)", 1.0, 3),
    "speedup_measured": ("Infer speedup (measured)", 1.0, 3),
    "param_reduction": ("Param red. vs LoRA", 100.0, 2),
    "realised_fraction": ("Realised F", 1.0, 4),
    "train_compute": ("Train compute", 1.0, 4),
}
# Cell entries that are headline metrics already (skipped in their section).
_HEADLINE_SOURCES = {
    ("train", "train_compute_proxy"), ("train", "realised_fraction"),
    ("compression", "infer_speedup_mac"), ("compression", "param_reduction_vs_lora"),
    ("speed", "modules_speedup_measured"), ("speed", "modules_speedup_mac"),
}  # fmt: skip


def is_module_metric(key: str) -> bool:
    """A per-module controller history (``alpha/L3.q_proj``, ``rank/L3.q_proj``)."""
    return key.startswith(MODULE_PREFIXES)


def _rounded(value: Any, digits: int = 4) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    if value == 0 or abs(value) >= 1e-3:
        return round(value, digits)
    return float(f"{value:.4g}")  # small magnitudes keep 4 significant digits


def headline_metrics(cell: Mapping[str, Any]) -> dict[str, float]:
    """The short-named metrics of one cell, in the report's units."""
    try:
        row = results_frame([cell]).iloc[0]
    except (ValueError, IndexError):  # a kind the report does not show (teacher pretraining)
        return {}
    out = {}
    for name, (column, scale, digits) in HEADLINE.items():
        value = _rounded(row[column] * scale if pd.notna(row[column]) else None, digits)
        if value is not None:
            out[name] = value
    return out


def detail_table(cell: Mapping[str, Any]) -> pd.DataFrame:
    """Every other number of the cell, one row each: columns section, name, value (ICL per
    task in %, as in Table 9)."""
    rows: list[tuple[str, str, float]] = []
    icl = cell.get("icl") or {}
    for task, entry in (icl.get("tasks") or {}).items():
        value = _rounded(100.0 * entry["mean"], 2) if "mean" in entry else None
        if value is not None:
            rows.append(("icl %", task, value))
    for section in ("train", "compression", "speed"):
        for key, raw in (cell.get(section) or {}).items():
            value = _rounded(raw)
            if (section, key) not in _HEADLINE_SOURCES and value is not None:
                rows.append((section, key, value))
    return pd.DataFrame(rows, columns=["section", "name", "value"])


def module_history(metrics_jsonl: str | Path) -> pd.DataFrame:
    """Long form of the per-module histories in a training log: columns step, module,
    alpha, rank (rank NaN where a module has no gates); empty when none were logged."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    path = Path(metrics_jsonl)
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        record = json.loads(line)
        if "step" not in record:
            continue
        for key, value in record.items():
            if is_module_metric(key):
                kind, module = key.split("/", 1)
                entry = rows.setdefault((record["step"], module), {})
                entry[kind] = value
    records = [
        {"step": step, "module": module, "alpha": v.get("alpha"), "rank": v.get("rank")}
        for (step, module), v in rows.items()
    ]
    frame = pd.DataFrame(records, columns=["step", "module", "alpha", "rank"])
    return frame.astype({"alpha": float, "rank": float})


def budget_line(table2: Any) -> str:
    """One line that answers "which budget?" from the formatted Table 2: each budget's MAC
    speedup and perplexity per teacher, against KD LoRA's."""
    ppl = [c for c in table2.columns if str(c).startswith("PPL ")]
    teachers = " / ".join(str(c)[4:] for c in ppl)

    def quality(label: str) -> str:
        return " / ".join(str(table2.loc[label, c]) for c in ppl)

    parts = [
        f"{label.removeprefix('Budgeted ')}: {table2.loc[label, 'MAC ×']} by MACs, PPL "
        f"{quality(label)}"
        for label in table2.index
        if str(label).startswith("Budgeted")
    ]
    if not parts:
        return "no budgeted cell in this grid."
    if "KD LoRA" in table2.index:
        parts.append(f"KD LoRA: PPL {quality('KD LoRA')}")
    return f"{'; '.join(parts)} (PPL of {teachers})."


# The runs-table columns of the grid's shared view: which cell, then the headline metrics.
VIEW_COLUMNS = ["tags.`teacher`", "tags.`method`", "tags.`final_fraction`"] + [
    f"metrics.`{name}`" for name in HEADLINE
]


def grid_view_state(grid_id: str) -> dict[str, Any]:
    """An MLflow UI runs-table view (the JSON its "share view" saves on the experiment):
    one grid's cells grouped by teacher, oldest first, the headline metrics as columns."""
    return {
        "searchFilter": f"tags.grid_id = '{grid_id}' and tags.kind = 'cell'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "selectedColumns": VIEW_COLUMNS,
        "columnOrder": VIEW_COLUMNS,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "teacher"}],
        },
    }
