"""Figures of the grid report (tasks/report_figures.py): what a reader can see in them —
which speedup is on which axis, the references, error bars that stay at or above 0, "0"
told apart from "not measured", no text drawn over other text."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text

from tasks.report_figures import (
    plot_icl_composite,
    plot_module_history,
    plot_pareto,
    plot_trajectories,
    removal_step,
)
from tasks.report_tables import results_frame, trajectory_frame
from tasks.run_metrics import module_history

TEACHERS = ["tiny-s", "tiny-m", "tiny-l"]


def _icl(mean: float | None, std: float = 0.02) -> dict[str, Any] | None:
    composite = {"mean": mean, "std": std, "baseline": 0.172}
    return None if mean is None else {"composite": composite, "tasks": {}}


def _cells() -> list[dict[str, Any]]:
    """Three teachers, every method, MAC speedups identical across teachers (as they are)."""
    cells: list[dict[str, Any]] = []
    for k, teacher in enumerate(TEACHERS):
        cells += [
            {"teacher": teacher, "method": "teacher", "ppl": 200.0 - 50 * k, "icl": _icl(0.03 * k)},
            {"teacher": teacher, "method": "kd_full", "ppl": 220.0 - k, "icl": _icl(0.01)},
            {"teacher": teacher, "method": "kd_lora", "ppl": 240.0 + k, "icl": _icl(0.0, 0.0),
             "speed": {"modules_speedup_measured": 1.01}},
        ]  # fmt: skip
        for fraction, mac in ((0.4, 1.76), (0.0, 3.70)):
            steps = [[s, max(fraction, 1 - s / 10), max(fraction, 1 - s / 14)] for s in range(40)]
            cells.append(
                {"teacher": teacher, "method": "budgeted", "final_fraction": fraction,
                 "ppl": 290.0 + 40 * (0.4 - fraction) + k,
                 "compression": {"infer_speedup_mac": mac, "param_reduction_vs_lora": 0.5},
                 "speed": {"modules_speedup_measured": 0.7 + 0.1 * k},
                 "icl": _icl(0.005 if k else None), "trajectory": {"step_target_actual": steps}}
            )  # fmt: skip
    cells.append({"teacher": "tiny-s", "method": "init", "ppl": 328.0, "icl": _icl(0.0, 0.0)})
    return cells


@pytest.fixture
def results() -> pd.DataFrame:
    return results_frame(_cells(), TEACHERS)


def _overlaps(figure: Figure) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts (titles, labels, ticks, legend, notes) whose boxes
    intersect once drawn."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    hidden = set()  # tick labels of ticks outside the view: matplotlib keeps but never draws them
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    hidden |= {tick.label1, tick.label2}
    found = figure.findobj(Text)  # legend entries, titles, labels, tick labels, notes
    texts = [t for t in found if t.get_visible() and t.get_text().strip() and t not in hidden]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [
        (a, b)
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
        if box_a.overlaps(box_b) and box_a.width * box_b.width > 0
    ]


def test_pareto_has_mac_speedup_on_x_and_measured_beside_it(results: pd.DataFrame) -> None:
    figure = plot_pareto(results, TEACHERS)
    mac, measured = figure.axes[:2]
    assert "MAC" in mac.get_xlabel() and "measured" in measured.get_xlabel()
    xs = np.concatenate([c.get_offsets()[:, 0] for c in mac.collections if len(c.get_offsets())])
    assert xs.max() == pytest.approx(3.70, abs=0.2)  # F=0's MAC ratio, only offset per teacher
    xs = np.concatenate([c.get_offsets()[:, 0] for c in measured.collections])
    assert xs.max() == pytest.approx(1.01)  # measured values, not MAC


def test_pareto_draws_every_teacher_and_the_warm_start(results: pd.DataFrame) -> None:
    ax = plot_pareto(results, TEACHERS).axes[0]
    levels = {
        round(line.get_ydata()[0], 6) for line in ax.lines if line.get_linestyle() in (":", "--")
    }
    assert {200.0, 150.0, 100.0, 328.0} <= levels  # three teachers' own PPL, the init's
    legend = [t.get_text() for t in plot_pareto(results, TEACHERS).axes[1].get_legend().get_texts()]
    assert {"teacher's own PPL", "warm start (init)", "Budgeted F=0.0", "KD Full"} <= set(legend)


def test_pareto_without_measurements_keeps_the_mac_panel(results: pd.DataFrame) -> None:
    results["Infer speedup (measured)"] = np.nan
    mac, measured = plot_pareto(results, TEACHERS).axes[:2]
    assert sum(len(c.get_offsets()) for c in mac.collections) == 12
    assert sum(len(c.get_offsets()) for c in measured.collections) == 3  # KD Full: 1x by definition


def test_icl_error_bars_never_go_below_zero(results: pd.DataFrame) -> None:
    results.loc[results["method"] == "kd_full", "ICL composite std"] = 0.05  # mean 0.01
    ax = plot_icl_composite(results, TEACHERS).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = [
        np.asarray(seg).reshape(-1, 2) for c in bars for seg in c.lines[2][0].get_segments()
    ]
    lows = [seg[:, 1].min() for seg in segments if len(seg)]
    assert lows and min(lows) >= 0.0


def test_icl_says_zero_and_not_measured_where_no_bar_shows(results: pd.DataFrame) -> None:
    ax = plot_icl_composite(results, TEACHERS).axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert notes.count("0") == 3  # KD LoRA of each teacher measured 0
    assert notes.count("n/a") == 2  # tiny-s budgets: no ICL result


def test_icl_has_every_teachers_reference_and_an_honest_title(results: pd.DataFrame) -> None:
    figure = plot_icl_composite(results, TEACHERS)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert [name for name in legend if name.startswith("teacher ")] == [
        "teacher tiny-s (full model): 0.0%",
        "teacher tiny-m (full model): 3.0%",
        "teacher tiny-l (full model): 6.0%",
    ]
    title = figure.axes[0].get_title()
    assert "accuracy" in title and "retention" not in title
    assert min(figure.axes[0].get_ylim()) == 0.0


def test_icl_shows_the_trivial_baseline_on_the_scale(results: pd.DataFrame) -> None:
    """Bars far under the no-ICL baseline must look it: the line is drawn and on the axis."""
    ax = plot_icl_composite(results, TEACHERS).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "trivial baseline (no ICL): 17.2%" in legend
    levels = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "-."]
    assert levels == [pytest.approx(0.172)] and max(ax.get_ylim()) > 0.172
    assert results["ICL baseline"].dropna().unique().tolist() == [pytest.approx(0.172)]


def test_trajectory_marks_where_each_budgets_removals_end() -> None:
    frame = trajectory_frame(_cells(), TEACHERS)
    figure = plot_trajectories(frame, TEACHERS)
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "Budgeted F=0.0: removals end (step 14)" in labels
    assert "Budgeted F=0.4: removals end (step 9)" in labels


def test_removal_step_is_where_the_fraction_stays_at_its_budget() -> None:
    steps = [0, 1, 2, 3, 4, 5]
    assert removal_step(steps, [1.0, 0.5, 0.0, 0.01, 0.0, 0.0], 0.0) == 4  # back up at step 3
    assert removal_step(steps, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 0.0) is None


@pytest.mark.parametrize("plot", ["pareto", "icl", "trajectory"])
def test_no_text_is_drawn_over_other_text(results: pd.DataFrame, plot: str) -> None:
    figure = {
        "pareto": lambda: plot_pareto(results, TEACHERS),
        "icl": lambda: plot_icl_composite(results, TEACHERS),
        "trajectory": lambda: plot_trajectories(trajectory_frame(_cells(), TEACHERS), TEACHERS),
    }[plot]()
    assert _overlaps(figure) == []


def test_module_history_heatmap(tmp_path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [
        {"params": {"total_steps": 4}},
        {"step": 2, "loss": 3.0, "alpha/L0.q_proj": 1.0, "rank/L0.q_proj": 8,
         "alpha/L0.k_proj": 0.5},
        {"step": 4, "loss": 2.0, "alpha/L0.q_proj": 0.2, "rank/L0.q_proj": 6,
         "alpha/L0.k_proj": 0.0},
    ]  # fmt: skip
    log.write_text("\n".join(json.dumps(r) for r in records))
    history = module_history(log)
    assert list(history["module"]) == ["L0.q_proj", "L0.k_proj", "L0.q_proj", "L0.k_proj"]
    assert list(history["step"]) == [2, 2, 4, 4]
    assert list(history["alpha"]) == [1.0, 0.5, 0.2, 0.0]
    assert history["rank"].tolist()[::2] == [8.0, 6.0] and history["rank"].isna().sum() == 2
    figure = plot_module_history(history)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        "alpha per module",
        "rank per module",
    ]
