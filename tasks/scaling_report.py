"""Stage: the token-scaling report — PPL ratio of Budgeted LoRA to KD LoRA against the
number of distillation optimizer steps (flows/scaling.py).

For every budget (steps) and training seed, ``ratio = PPL(Budgeted F) / PPL(KD LoRA)`` of
the same steps and seed; the table gives the mean over seeds with its min and max, the
figure one line per F with the seeds' spread as a band, beside the paper's ratios.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.common import record_execution
from tasks.report_figures import write_atomic
from tasks.report_tables import markdown_table

# Paper Table 2 (Sabry & Belz), Budgeted / KD LoRA perplexity over its three teachers.
PAPER_RATIOS = {0.4: (1.001, 1.005), 0.0: (1.03, 1.09)}


def scaling_frame(cells: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per budgeted cell: steps, seed, F, its PPL, KD LoRA's PPL and the ratio."""
    lora = {(c["steps"], c["seed"]): c["ppl"] for c in cells if c["method"] == "kd_lora"}
    rows = []
    for c in cells:
        if c["method"] != "budgeted" or (c["steps"], c["seed"]) not in lora:
            continue
        base = lora[(c["steps"], c["seed"])]
        rows.append(
            {
                "steps": int(c["steps"]),
                "seed": int(c["seed"]),
                "final_fraction": float(c["final_fraction"]),
                "ppl": float(c["ppl"]),
                "ppl_kd_lora": float(base),
                "ratio": float(c["ppl"]) / float(base),
            }
        )
    columns = ["steps", "seed", "final_fraction", "ppl", "ppl_kd_lora", "ratio"]
    return pd.DataFrame(rows, columns=columns).sort_values(["final_fraction", "steps", "seed"])


def scaling_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (F, steps): KD LoRA PPL and the ratio's mean, min and max over seeds."""
    grouped = frame.groupby(["final_fraction", "steps"])
    table = pd.DataFrame(
        {
            "seeds": grouped["seed"].count(),
            "PPL KD LoRA (mean)": grouped["ppl_kd_lora"].mean(),
            "PPL Budgeted (mean)": grouped["ppl"].mean(),
            "ratio mean": grouped["ratio"].mean(),
            "ratio min": grouped["ratio"].min(),
            "ratio max": grouped["ratio"].max(),
        }
    )
    return table.reset_index().sort_values(["final_fraction", "steps"], ascending=[False, True])


def plot_scaling(frame: pd.DataFrame, teacher: str) -> Figure:
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for color, (fraction, part) in zip(("tab:blue", "tab:red", "tab:green", "tab:purple"),
                                       frame.groupby("final_fraction", sort=False)):  # fmt: skip
        stats = part.groupby("steps")["ratio"].agg(["mean", "min", "max"])
        label = f"Budgeted F={fraction:g} / KD LoRA"
        ax.plot(stats.index, stats["mean"], marker="o", color=color, label=label)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
        if fraction in PAPER_RATIOS:
            low, high = PAPER_RATIOS[fraction]
            ax.axhspan(low, high, color=color, alpha=0.12, hatch="//", linewidth=0)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distillation optimizer steps (log scale)")
    ax.set_ylabel("PPL ratio to KD LoRA (1 = equal)")
    ax.set_title(
        f"Budgeted vs KD LoRA as steps grow (teacher {teacher}); band: seeds' min-max,\n"
        "hatched: the paper's ratios"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return figure


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


@task(name="scaling-report", task_run_name="scaling-report")
def scaling_report_task(
    output_dir: str, cells: list[dict[str, Any]], teacher: str, preset: str
) -> dict[str, Any]:
    """``report/scaling.csv`` (every cell), ``scaling.md`` (the table) and ``scaling.png``."""
    record_execution(output_dir, "scaling-report", "report")
    out = Path(output_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    frame = scaling_frame(cells)
    table = scaling_table(frame)
    text = table.astype(object).map(_text).set_index("final_fraction")
    markdown = (
        f"# Token scaling ({preset} ladder, teacher {teacher})\n\n"
        "PPL ratio = PPL(Budgeted F) / PPL(KD LoRA) at the same optimizer steps and seed "
        "(compressed students); mean, min and max over training seeds. Paper (Table 2): "
        "F=0.4 1.001–1.005, F=0 1.03–1.09.\n\n" + markdown_table(text)
    )
    buffer = io.BytesIO()
    plot_scaling(frame, teacher).savefig(buffer, format="png", dpi=150)
    paths = {
        "csv": write_atomic(out / "scaling.csv", frame.to_csv(index=False).encode()),
        "markdown": write_atomic(out / "scaling.md", markdown.encode()),
        "figure": write_atomic(out / "scaling.png", buffer.getvalue()),
    }
    create_markdown_artifact(key="token-scaling", markdown=markdown, description="Token scaling")
    return paths
