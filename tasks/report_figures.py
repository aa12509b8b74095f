"""Figures of a grid report (DESIGN §10): quality vs inference-speedup Pareto plot, ICL composite
bars, and the budget controller's dense-fraction trajectory (target vs actual).

Inputs are the tidy frames of ``tasks.report_tables`` (``results_frame``: one row per cell;
``trajectory_frame``: one row per logged controller step); this module imports nothing from it.
Figures are built without ``pyplot``, each on its own Agg canvas: pyplot keeps a global backend
and figure registry that is not thread-safe, and Prefect may run report tasks in worker threads.

Pareto dominance (lower perplexity and higher inference speedup are both better)::

    a dominates b  <=>  ppl_a <= ppl_b  and  speedup_a >= speedup_b  and  a != b on one of them
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

TRAINED_METHODS = ("kd_full", "kd_lora", "budgeted")
MEASURED = "Infer speedup (measured)"
MAC = "Infer speedup (MAC)"
FIGURE_CAPTIONS = {
    "pareto.png": "PPL vs inference speedup, Pareto frontier per teacher",
    "icl_composite.png": "ICL composite per method and teacher",
    "trajectory.png": "Controller target vs actual dense fraction",
}


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(ppl, speedup)`` points.

    Points with a non-finite coordinate are never on the frontier: a missing measurement is not a
    trade-off. Exact duplicates do not dominate each other, so both stay.
    """
    finite = [i for i, point in enumerate(points) if all(math.isfinite(v) for v in point)]

    def dominated(i: int) -> bool:
        ppl, speedup = points[i]
        return any(
            points[j][0] <= ppl
            and points[j][1] >= speedup
            and (points[j][0] < ppl or points[j][1] > speedup)
            for j in finite
        )

    return [i for i in finite if not dominated(i)]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg, no global backend
    return figure


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center")
    ax.set_axis_off()


def _colors(num: int) -> list[tuple[float, float, float, float]]:
    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(num)]


def _ladder(present: pd.Series, teachers: Sequence[str] | None) -> list[str]:
    """The teachers in ``present``: in ``teachers`` order where given, else first appearance."""
    seen = list(dict.fromkeys(present))
    given = [t for t in teachers or () if t in seen]
    return given + [t for t in seen if t not in given]


def _speedup_basis(trained: pd.DataFrame) -> tuple[pd.Series, str]:
    """One basis for every point: measured only when every budgeted student has it, else MAC.
    Mixing wall-clock and MAC ratios on one axis would draw a frontier no run supports."""
    budgeted = trained[trained["method"] == "budgeted"]
    if len(budgeted) and budgeted[MEASURED].notna().all():
        # Unmeasured KD students keep their dense modules: their MAC ratio (1.0) holds for both.
        unmeasured = trained[MAC].where(trained["method"] != "budgeted")
        return trained[MEASURED].fillna(unmeasured), "inference speedup, measured (adapted modules)"
    return trained[MAC], "inference speedup, MAC (adapted modules)"


def plot_pareto(results: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """PPL (y) vs inference speedup (x) of the distilled students (KD Full, KD LoRA, budgets),
    one colour per teacher, each teacher's Pareto frontier through its non-dominated students."""
    figure = _new_figure(7.0, 5.0)
    ax = figure.add_subplot()
    trained = results[results["method"].isin(TRAINED_METHODS)]
    speedup, speedup_label = _speedup_basis(trained)
    points = trained.assign(speedup=speedup).dropna(subset=["ppl", "speedup"])
    if points.empty:
        _no_data(ax, "perplexity/speedup pairs")
        return figure
    ladder = _ladder(points["teacher"], teachers)
    for color, teacher in zip(_colors(len(ladder)), ladder):
        group = points[points["teacher"] == teacher]
        ax.scatter(group["speedup"], group["ppl"], color=color, label=teacher)
        for label, x, y in zip(group["label"], group["speedup"], group["ppl"]):
            ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        on_frontier = pareto_frontier(list(zip(group["ppl"], group["speedup"])))
        frontier = group.iloc[on_frontier].sort_values("speedup")
        ax.plot(frontier["speedup"], frontier["ppl"], color=color, alpha=0.6)
    ax.set_xlabel(speedup_label)
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_title("Quality vs inference speedup (line: Pareto frontier per teacher)")
    ax.grid(alpha=0.3)
    ax.legend(title="teacher")
    return figure


def _icl_references(results: pd.DataFrame, teachers: list[str]) -> list[tuple[str, float, str]]:
    """(label, composite, linestyle): the untrained init dashed; the full smallest teacher dotted
    (the paper's Figure 2 line: the model every student is initialised from)."""
    lines = []
    for method, linestyle in (("init", "--"), ("teacher", ":")):
        rows = results[(results["method"] == method) & results["ICL composite"].notna()]
        if method == "teacher":
            rows = rows[rows["teacher"].isin(teachers[:1])]
        if len(rows):
            row = rows.iloc[0]
            label = row["label"] if method == "init" else f"Teacher {row['teacher']} (full model)"
            lines.append((label, float(row["ICL composite"]), linestyle))
    return lines


def plot_icl_composite(results: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """Grouped bars: one group per method/budget, one bar per teacher, error bars = std over
    demonstration seeds; reference lines for the init and the smallest teacher."""
    students = results[~results["method"].isin(("teacher", "init"))]
    teachers = _ladder(results["teacher"], teachers)
    mean = students.pivot(index="label", columns="teacher", values="ICL composite")
    std = students.pivot(index="label", columns="teacher", values="ICL composite std")
    labels = list(dict.fromkeys(students["label"]))
    mean, std = (f.reindex(index=labels, columns=teachers) for f in (mean, std))
    references = _icl_references(results, teachers)
    figure = _new_figure(max(6.0, 1.4 * len(labels) + 2.0), 4.5)
    ax = figure.add_subplot()
    if mean.isna().all().all() and not references:
        _no_data(ax, "ICL results")
        return figure
    width = 0.8 / max(1, len(teachers))
    x = np.arange(len(labels))
    for k, (color, teacher) in enumerate(zip(_colors(len(teachers)), teachers)):
        # A missing std draws no error bar; a missing mean draws no bar (never a zero bar).
        offset = (k - (len(teachers) - 1) / 2) * width
        ax.bar(
            x + offset, mean[teacher].to_numpy(float), width, color=color, label=teacher,
            yerr=std[teacher].fillna(0.0).to_numpy(float), capsize=3,
        )  # fmt: skip
    for label, value, linestyle in references:
        ax.axhline(value, color="black", linestyle=linestyle, label=label)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("ICL composite (macro mean over probes)")
    ax.set_title("In-context-learning retention (error bars: std over demonstration seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # bars stay visible
    return figure


def plot_trajectories(trajectories: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """One panel per teacher: target dense fraction f(p) dashed, realised C(t)/Σc solid, one
    colour per budget, the same on every panel."""
    teachers = _ladder(trajectories["teacher"], teachers)
    figure = _new_figure(4.5 * max(1, len(teachers)), 4.0)
    if not teachers:
        _no_data(figure.add_subplot(), "controller trajectories")
        return figure
    labels = list(dict.fromkeys(trajectories["label"]))
    color_of = dict(zip(labels, _colors(len(labels))))
    axes = figure.subplots(1, len(teachers), sharey=True, squeeze=False)[0]
    for ax, teacher in zip(axes, teachers):
        for label, run in trajectories[trajectories["teacher"] == teacher].groupby(
            "label", sort=False
        ):
            color = color_of[label]
            ax.plot(
                run["step"], run["target"], color=color, linestyle="--", label=f"{label} target"
            )
            ax.plot(run["step"], run["actual"], color=color, label=f"{label} actual")
        ax.set_title(f"teacher {teacher}")
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dense fraction of adapted-module MACs")
    axes[0].legend(fontsize=7)
    return figure


def write_atomic(path: Path, data: bytes) -> str:
    """Write a temp file beside ``path``, then ``os.replace`` it: a reader (or a retried task)
    never sees half a file, and the unique temp name keeps concurrent writers apart."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return str(path)


def write_figures(
    results: pd.DataFrame,
    trajectories: pd.DataFrame,
    out_dir: Path,
    teachers: Sequence[str] | None = None,
) -> dict[str, str]:
    """Render the ``FIGURE_CAPTIONS`` figures as PNG files in ``out_dir``; return name -> path.
    ``teachers`` is the ladder order (default: order of first appearance)."""
    figures = {
        "pareto.png": plot_pareto(results, teachers),
        "icl_composite.png": plot_icl_composite(results, teachers),
        "trajectory.png": plot_trajectories(trajectories, teachers),
    }
    paths = {}
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=150)
        paths[name] = write_atomic(Path(out_dir) / name, buffer.getvalue())
    return paths
