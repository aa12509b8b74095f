"""Figures of a grid report (DESIGN §10): quality vs inference-speedup Pareto plot, ICL composite
bars, and the budget controller's dense-fraction trajectory (target vs actual); and one cell's
per-module controller history (a heatmap logged to that cell's MLflow run).

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
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

TRAINED_METHODS = ("kd_full", "kd_lora", "budgeted")
MEASURED = "Infer speedup (measured)"
MAC = "Infer speedup (MAC)"
FIGURE_CAPTIONS = {
    "pareto.png": "PPL vs inference speedup (MAC and measured), Pareto frontier per teacher",
    "icl_composite.png": "ICL composite accuracy per method and teacher",
    "trajectory.png": "Controller target vs actual dense fraction, and where removals end",
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


# One marker per row label: points carry no text labels (they collided at toy shapes),
# the legend names them.
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "*", "p")
NOT_MEASURED = "not measured"


def _marker_of(labels: Sequence[str]) -> dict[str, str]:
    return {label: _MARKERS[k % len(_MARKERS)] for k, label in enumerate(labels)}


def _reference_ppl(results: pd.DataFrame, method: str) -> pd.DataFrame:
    rows = results[(results["method"] == method) & results["ppl"].notna()]
    return rows.drop_duplicates("teacher")


def _measured_or_construction(trained: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Measured speedups; a dense student (KD Full, never measured) is 1x by construction.
    Returns the values and whether each was measured."""
    measured = trained[MEASURED].notna()
    by_construction = trained[MAC].where(trained["method"] == "kd_full")
    return trained[MEASURED].fillna(by_construction), measured


def _pareto_panel(
    ax: Axes, points: pd.DataFrame, x: str, ladder: list[str], style: dict, dodge: float
) -> None:
    """Scatter (colour = teacher, marker = method/budget) and each teacher's frontier.
    ``dodge``: horizontal offset between teachers, as a fraction of the x range (MAC ratios
    are the same for every teacher by construction, so their markers would sit on top of
    each other)."""
    values = points[x].dropna()
    span = float(values.max() - values.min()) if len(values) else 0.0
    for k, (color, teacher) in enumerate(zip(_colors(len(ladder)), ladder)):
        group = points[(points["teacher"] == teacher) & points[x].notna()]
        shift = (k - (len(ladder) - 1) / 2) * dodge * max(span, 0.5)
        for _, row in group.iterrows():
            hollow = x == "measured" and not row["was_measured"]
            ax.scatter(
                row[x] + shift, row["ppl"], s=46, marker=style[row["label"]], zorder=3,
                facecolors="none" if hollow else [color], edgecolors=[color], linewidths=1.4,
            )  # fmt: skip
        on_frontier = pareto_frontier(list(zip(group["ppl"], group[x])))
        frontier = group.iloc[on_frontier].sort_values(x)
        ax.plot(frontier[x] + shift, frontier["ppl"], color=color, alpha=0.5, zorder=2)
    ax.axvline(1.0, color="0.6", linewidth=0.8, zorder=1)
    ax.grid(alpha=0.3)


def plot_pareto(results: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """PPL (y) vs inference speedup of the distilled students (KD Full, KD LoRA, budgets):
    left the MAC ratio (what the structure saves), right the measured wall-clock ratio of the
    same modules. Colour = teacher, marker = method/budget, line = each teacher's Pareto
    frontier; horizontal lines: every teacher's own PPL (dotted) and the warm start (dashed)."""
    figure = _new_figure(11.0, 5.0)
    trained = results[results["method"].isin(TRAINED_METHODS)]
    measured, was_measured = _measured_or_construction(trained)
    points = trained.assign(mac=trained[MAC], measured=measured, was_measured=was_measured)
    points = points.dropna(subset=["ppl"])
    points = points[points["mac"].notna() | points["measured"].notna()]
    if points.empty:
        _no_data(figure.add_subplot(), "perplexity/speedup pairs")
        return figure
    ladder = _ladder(points["teacher"], teachers)
    style = _marker_of(list(dict.fromkeys(points["label"])))
    axes = figure.subplots(1, 2, sharey=True)
    colors = dict(zip(ladder, _colors(len(ladder))))
    for ax, x, xlabel, dodge in (
        (axes[0], "mac", "inference speedup, MAC ratio (adapted modules)", 0.02),
        (axes[1], "measured", "inference speedup, measured (adapted modules, wall clock)", 0.0),
    ):
        _pareto_panel(ax, points, x, ladder, style, dodge)
        ax.set_xlabel(xlabel)
        for _, row in _reference_ppl(results, "teacher").iterrows():
            ax.axhline(row["ppl"], color=colors.get(row["teacher"], "0.3"), linestyle=":")
        for _, row in _reference_ppl(results, "init").iterrows():
            ax.axhline(row["ppl"], color="black", linestyle="--", linewidth=1.0)
    axes[0].set_ylabel("validation perplexity (lower is better)")
    axes[0].set_title("by MACs: what the structure saves (teachers offset slightly)", fontsize=10)
    axes[1].set_title("measured: wall clock of the same modules", fontsize=10)
    figure.suptitle("Quality vs inference speedup (better: down and right)")
    axes[1].legend(
        handles=_pareto_legend(ladder, colors, style, results), fontsize=8,
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
    )  # fmt: skip
    return figure


def _pareto_legend(
    ladder: list[str], colors: dict, style: dict[str, str], results: pd.DataFrame
) -> list[Line2D]:
    handles = [Line2D([], [], color=colors[t], marker="o", linestyle="-", label=f"teacher {t}")
               for t in ladder]  # fmt: skip
    handles += [Line2D([], [], color="0.3", marker=m, linestyle="none", label=label)
                for label, m in style.items()]  # fmt: skip
    if len(_reference_ppl(results, "teacher")):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="teacher's own PPL"))
    if len(_reference_ppl(results, "init")):
        handles.append(Line2D([], [], color="black", linestyle="--", label="warm start (init)"))
    handles.append(
        Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="none",
            linestyle="none",
            label="hollow: 1× by construction",
        )  # fmt: skip
    )
    return handles


def _icl_references(results: pd.DataFrame, teachers: list[str]) -> list[tuple[str, float, dict]]:
    """(label, composite, line style): the untrained warm start dashed black; every teacher
    dotted in its bars' colour (the paper's Figure 2 lines); the trivial baseline (what
    answering without in-context inference scores, bl_core.icl) dash-dotted grey."""
    lines = []
    baselines = results["ICL baseline"].dropna()
    if len(baselines):  # the same queries for every model: one value
        value = float(baselines.iloc[0])
        label = f"trivial baseline (no ICL): {100 * value:.1f}%"
        lines.append((label, value, {"color": "0.5", "linestyle": "-."}))
    rows = results[(results["method"] == "init") & results["ICL composite"].notna()]
    if len(rows):
        value = float(rows.iloc[0]["ICL composite"])
        label = f"{rows.iloc[0]['label']}: {100 * value:.1f}%"
        lines.append((label, value, {"color": "black", "linestyle": "--"}))
    colors = dict(zip(teachers, _colors(len(teachers))))
    rows = results[(results["method"] == "teacher") & results["ICL composite"].notna()]
    for _, row in rows.drop_duplicates("teacher").iterrows():
        style = {"color": colors.get(row["teacher"], "0.3"), "linestyle": ":"}
        value = float(row["ICL composite"])
        lines.append((f"teacher {row['teacher']} (full model): {100 * value:.1f}%", value, style))
    return lines


def _bar_notes(ax: Axes, positions: np.ndarray, values: np.ndarray, top: float) -> None:
    """Say "0" over a zero bar and "n/a" where nothing was measured: both draw no bar."""
    for x, value in zip(positions, values):
        if np.isnan(value):
            ax.text(x, 0.01 * top, "n/a", ha="center", va="bottom", fontsize=6, color="0.4",
                    rotation=90)  # fmt: skip
        elif value == 0:
            ax.text(x, 0.01 * top, "0", ha="center", va="bottom", fontsize=7)


def plot_icl_composite(results: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """Grouped bars: one group per method/budget, one bar per teacher; error bars = std over
    demonstration seeds, clipped at 0 (accuracy cannot be negative); "0" and "n/a" written
    where no bar shows; reference lines for the warm start, every teacher and the trivial
    baseline (on the scale: bars far under it show no in-context learning)."""
    students = results[~results["method"].isin(("teacher", "init"))]
    teachers = _ladder(results["teacher"], teachers)
    mean = students.pivot(index="label", columns="teacher", values="ICL composite")
    std = students.pivot(index="label", columns="teacher", values="ICL composite std")
    labels = list(dict.fromkeys(students["label"]))
    mean, std = (f.reindex(index=labels, columns=teachers) for f in (mean, std))
    references = _icl_references(results, teachers)
    figure = _new_figure(max(6.5, 1.4 * len(labels) + 3.0), 4.5)
    ax = figure.add_subplot()
    if mean.isna().all().all() and not references:
        _no_data(ax, "ICL results")
        return figure
    highs = [np.nanmax((mean + std.fillna(0)).to_numpy(float), initial=0.0)]
    top = max([*highs, *(value for _, value, _ in references), 0.01])
    width = 0.8 / max(1, len(teachers))
    x = np.arange(len(labels))
    for k, (color, teacher) in enumerate(zip(_colors(len(teachers)), teachers)):
        offset = (k - (len(teachers) - 1) / 2) * width
        values, spread = mean[teacher].to_numpy(float), std[teacher].fillna(0.0).to_numpy(float)
        below = np.minimum(spread, np.nan_to_num(values))  # clip the bar's error at 0
        ax.bar(x + offset, values, width, color=color, label=f"students of {teacher}",
               yerr=np.vstack([below, spread]), capsize=3)  # fmt: skip
        _bar_notes(ax, x + offset, values, top)
    for label, value, style in references:
        ax.axhline(value, label=label, **style)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.15 * top)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("ICL composite: exact match, macro mean over probes")
    ax.set_title(
        "ICL composite accuracy per method and teacher\n"
        "(error bars: std over demonstration seeds, clipped at 0; n/a: not measured)",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # bars stay visible
    return figure


def removal_step(steps: Sequence[float], actual: Sequence[float], final: float) -> float | None:
    """First step from which the realised dense fraction stays within 0.005 of ``final``
    (the controller has finished removing dense paths); None if it never gets there."""
    done = None
    for step, value in zip(steps, actual):
        if abs(value - final) <= 0.005:
            done = step if done is None else done
        else:
            done = None
    return done


def plot_trajectories(trajectories: pd.DataFrame, teachers: Sequence[str] | None = None) -> Figure:
    """One panel per teacher: target dense fraction f(p) dashed, realised C(t)/Σc solid, one
    colour per budget, the same on every panel; a dotted vertical line where each budget's
    removals end (the steps after it are all the student has to recover)."""
    teachers = _ladder(trajectories["teacher"], teachers)
    figure = _new_figure(4.5 * max(1, len(teachers)), 4.8)
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
            done = removal_step(list(run["step"]), list(run["actual"]), run["target"].iloc[-1])
            if done is not None:
                ax.axvline(done, color=color, linestyle=":", linewidth=1.0,
                           label=f"{label}: removals end (step {done:g})")  # fmt: skip
        ax.set_title(f"teacher {teacher}")
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dense fraction of adapted-module MACs")
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a budget's removal step may differ per teacher: name every line
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    figure.legend(handles, names, loc="outside lower center", ncol=3, fontsize=7)
    return figure


def plot_module_history(history: pd.DataFrame) -> Figure:
    """One cell's per-module controller history (``run_metrics.module_history``): alpha of
    every module over the logged steps as a heatmap, and the active rank beside it when the
    modules have gates."""
    panels = ["alpha"] + (["rank"] if history["rank"].notna().any() else [])
    modules = list(dict.fromkeys(history["module"]))
    figure = _new_figure(5.0 * len(panels) + 1.0, max(3.0, 0.16 * len(modules) + 1.5))
    if history.empty:
        _no_data(figure.add_subplot(), "per-module histories")
        return figure
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, value in zip(axes, panels):
        grid = history.pivot(index="module", columns="step", values=value).reindex(modules)
        steps = grid.columns.to_numpy(float)
        image = ax.pcolormesh(
            _edges(steps), np.arange(len(modules) + 1), grid.to_numpy(float),
            cmap="viridis", vmin=0.0,  # a rank of 0 and an alpha of 0 are both "nothing left"
            vmax=1.0 if value == "alpha" else max(1.0, float(np.nanmax(grid.to_numpy(float)))),
            shading="flat",
        )  # fmt: skip
        figure.colorbar(image, ax=ax, label="alpha (dense path kept)" if value == "alpha"
                        else "active rank")  # fmt: skip
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{value} per module")
    axes[0].set_yticks(np.arange(len(modules)) + 0.5, modules, fontsize=6)
    axes[0].invert_yaxis()
    return figure


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted step values, for pcolormesh."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    middle = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - middle[0]], middle, [2 * centers[-1] - middle[-1]]])


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
    return {name: write_png(figure, Path(out_dir) / name) for name, figure in figures.items()}


def write_png(figure: Figure, path: Path, dpi: int = 150) -> str:
    """Render ``figure`` as a PNG file, atomically; returns the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return write_atomic(Path(path), buffer.getvalue())
