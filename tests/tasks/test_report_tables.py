"""Tables, Markdown, figures and files of the grid report (tasks/report_tables.py and
tasks/report_figures.py, DESIGN §10). Synthetic cells only: fast, offline, no models."""

from __future__ import annotations

import ast
import copy
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.report_summary import compact_table, warm_start_note
from tasks.report_tables import (
    COMPOSITE,
    MISSING,
    TABLE2_EFFICIENCY,
    display_headers,
    format_table,
    format_table8,
    markdown_table,
    method_label,
    pareto_frontier,
    results_frame,
    table2,
    table8,
    table9,
    trajectory_frame,
    write_report,
)

TEACHERS = ["tiny-s", "tiny-m"]
TASKS = ["capitalize", "next_item"]
TRAINED_ROWS = ["KD Full", "KD LoRA", "Budgeted F=0.4", "Budgeted F=0.0"]
TABLE2_ROWS = ["Teacher", "Init (warm start)", *TRAINED_ROWS]
FILES = [
    "results.csv", "table2.csv", "table2.md", "table8.csv", "table8.md", "table9.csv",
    "table9.md", "pareto.png", "icl_composite.png", "trajectory.png", "report.md",
]  # fmt: skip


def _icl(base: float) -> dict[str, Any]:
    tasks = {
        t: {"mean": base + 0.1 * k, "std": 0.01, "per_seed": [base]} for k, t in enumerate(TASKS)
    }
    return {"composite": {"mean": base + 0.05, "std": 0.02}, "tasks": tasks}


def _budgeted(teacher: str, fraction: float, k: int) -> dict[str, Any]:
    kept = 0 if fraction == 0.0 else 9
    steps = [[s, max(fraction, 1 - s / 10), max(fraction, 1 - s / 12)] for s in range(0, 21, 2)]
    return {
        "teacher": teacher, "method": "budgeted", "final_fraction": fraction,
        "ppl": 25.0 - fraction + k,
        "train": {"tokens_per_s": 3000.0 + k, "train_compute_proxy": 0.38 if kept == 0 else 0.59,
                  "realised_fraction": fraction + 0.001, "mean_retention_measured": 0.5},
        "compression": {"dense_kept": kept, "dense_svd": 0, "dense_dropped": 42 - kept,
                        "avg_rank": 128.0, "infer_speedup_mac": 4.05 if kept == 0 else 1.74,
                        "param_reduction_vs_lora": 0.802 if kept == 0 else 0.539,
                        "num_modules": 42},
        "speed": {"modules_speedup_measured": 1.5 + k, "forward_speedup_measured": 1.2,
                  "generate_speedup_measured": 1.1},
        "icl": _icl(0.05 + fraction / 10), "trajectory": {"step_target_actual": steps},
    }  # fmt: skip


def _grid() -> list[dict[str, Any]]:
    """2 teachers × (teacher, init, kd_full, kd_lora, budgeted F=0 and F=0.4), given out of
    order: the tables must sort them."""
    cells = []
    for k, teacher in enumerate(TEACHERS):
        kd = {"speed": {"modules_speedup_measured": 1.0}, "compression": None}
        cells += [_budgeted(teacher, 0.0, k), _budgeted(teacher, 0.4, k)]
        cells += [
            {"teacher": teacher, "method": "kd_lora", "ppl": 24.0 + k, "icl": _icl(0.03),
             "train": {"tokens_per_s": 2000.0 + k, "train_compute_proxy": 0.914}, **kd},
            {"teacher": teacher, "method": "teacher", "ppl": 21.8 - 5 * k, "icl": _icl(0.08)},
            {"teacher": teacher, "method": "kd_full", "ppl": 20.9 - k, "icl": _icl(0.04),
             "train": {"tokens_per_s": 1000.0 + k, "train_compute_proxy": 1.0}, **kd},
            {"teacher": teacher, "method": "init", "ppl": 60.0, "icl": _icl(0.05)},
        ]  # fmt: skip
    return cells


@pytest.fixture
def grid() -> list[dict[str, Any]]:
    return _grid()


def test_method_labels() -> None:
    assert method_label({"method": "kd_full"}) == "KD Full"
    assert method_label({"method": "kd_lora"}) == "KD LoRA"
    assert method_label({"method": "budgeted", "final_fraction": 0.4}) == "Budgeted F=0.4"
    assert method_label({"method": "budgeted", "final_fraction": 0}) == "Budgeted F=0.0"
    assert method_label({"method": "budgeted", "final_fraction": 0.25}) == "Budgeted F=0.25"
    assert method_label({"method": "budgeted"}) == "Budgeted"
    assert method_label({"method": "teacher"}) == "Teacher"
    assert method_label({"method": "init"}) == "Init (warm start)"
    assert method_label({"method": "scratch"}) == "Scratch"
    with pytest.raises(ValueError, match="method='lora'"):
        method_label({"method": "lora"})


def test_table2_rows_columns_and_filled_cells(grid: list[dict[str, Any]]) -> None:
    t2 = table2(grid)
    assert list(t2.index) == TABLE2_ROWS  # references, KD Full, KD LoRA, budgets densest first
    assert list(t2.columns) == ["PPL tiny-s", "PPL tiny-m", *TABLE2_EFFICIENCY]
    assert t2[["PPL tiny-s", "PPL tiny-m"]].notna().all().all()
    efficiency = [c for c in TABLE2_EFFICIENCY if c != "Realised F"]
    assert t2.loc[TRAINED_ROWS, efficiency].notna().all().all()
    assert t2.loc[["Budgeted F=0.4", "Budgeted F=0.0"], "Realised F"].tolist() == [0.401, 0.001]
    assert t2.loc["KD Full", "PPL tiny-m"] == pytest.approx(19.9)
    assert t2.loc["KD LoRA", "Param red. vs LoRA"] == 0.0  # paper convention, no compression


def test_table2_per_method_columns_come_from_the_first_teacher(grid: list[dict[str, Any]]) -> None:
    assert table2(grid).loc["KD Full", "Train tokens/s (measured)"] == 1000.0  # not 1001 or mean
    assert table2(grid, teacher_order=["tiny-m", "tiny-s"]).loc["KD Full"].iloc[0] == 19.9
    grid[4]["train"].pop("tokens_per_s")  # tiny-s KD Full: the next teacher fills the gap
    assert table2(grid).loc["KD Full", "Train tokens/s (measured)"] == 1001.0


def test_table8_structure(grid: list[dict[str, Any]]) -> None:
    t8 = table8(grid)
    assert list(t8.index) == ["KD LoRA", "Budgeted F=0.4", "Budgeted F=0.0"]
    assert t8[["Dense kept", "Dense SVD", "Dense dropped", "Modules"]].notna().all().all()
    assert t8.loc["KD LoRA", ["Dense kept", "Dense dropped", "Infer speedup (MAC)"]].tolist() == [
        42.0, 0.0, 1.0,
    ]  # fmt: skip
    assert t8.loc["Budgeted F=0.4", "Teacher"] == "tiny-s"
    assert t8.loc["Budgeted F=0.0", "Infer speedup (measured)"] == 1.5  # whole row from tiny-s
    text = format_table8(t8)
    assert text.loc["Budgeted F=0.4", "Dense kept"] == "9/42"
    assert text.loc["Budgeted F=0.0", "Param red. vs LoRA"] == "80.2%"
    assert text.loc["KD LoRA", "Avg rank"] == MISSING  # merged: no separate low-rank path


def test_table9_tasks_composite_and_formatting(grid: list[dict[str, Any]]) -> None:
    t9 = table9(grid)
    assert list(t9.mean.index) == [*TASKS, COMPOSITE]
    assert len(t9.mean.columns) == 12 and t9.mean.columns[0] == "Teacher [tiny-s]"
    assert t9.mean.notna().all().all() and t9.std.notna().all().all()
    assert t9.mean.loc[COMPOSITE, "Budgeted F=0.4 [tiny-m]"] == pytest.approx(0.14)
    text = t9.formatted()
    assert text.loc["next_item", "KD Full [tiny-s]"] == "14.0 ± 1.0"
    assert text.loc[COMPOSITE, "KD Full [tiny-s]"] == "9.0 ± 2.0"
    assert t9.formatted(percent=False).loc[COMPOSITE, "KD Full [tiny-s]"] == "0.090 ± 0.020"


def test_missing_values_render_dash_without_crashing() -> None:
    cells = [
        {"method": "init", "teacher": None, "ppl": None, "icl": None, "train": None},
        {"method": "budgeted", "teacher": "t", "final_fraction": 0.4, "compression": {},
         "icl": {"composite": None, "tasks": {"capitalize": {"mean": 0.5}}}, "speed": None,
         "trajectory": {"step_target_actual": [[0, 1.0], None]}},
        {"method": "kd_lora", "teacher": "t", "ppl": "n/a"},
    ]  # fmt: skip
    t2, t8, t9 = table2(cells), table8(cells), table9(cells)
    assert list(t2.columns[:1]) == ["PPL t"]  # the teacher-less init sits under the first teacher
    assert t2.isna().any().any()
    for text in (format_table(t2), format_table8(t8), t9.formatted()):
        rendered = markdown_table(text)
        assert MISSING in rendered and "nan" not in rendered.lower()
    assert t9.formatted().loc["capitalize", "Budgeted F=0.4 [t]"] == "50.0"  # no std: mean only
    assert list(t8.index) == ["KD LoRA"]  # an empty compression dict is no structure


def test_unknown_and_duplicate_cells_are_refused(grid: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="2 cells for teacher='tiny-s', method='KD Full'"):
        table2([*grid, {"teacher": "tiny-s", "method": "kd_full"}])
    with pytest.raises(ValueError, match="method='full'"):
        table8([{"teacher": "t", "method": "full"}])


def test_training_seeds_of_one_cell_are_averaged(grid: list[dict[str, Any]]) -> None:
    seeded = [cell | {"seed": 0} for cell in grid]
    again = copy.deepcopy(seeded[0]) | {"seed": 1, "ppl": 27.0}  # tiny-s, Budgeted F=0.0
    again["compression"]["dense_kept"] = 1
    again["icl"]["composite"]["mean"] = 0.15
    t2, t8, t9 = table2([*seeded, again]), table8([*seeded, again]), table9([*seeded, again])
    assert t2.loc["Budgeted F=0.0", "PPL tiny-s"] == pytest.approx(26.0)
    assert t2.loc["Budgeted F=0.0", "PPL tiny-m"] == pytest.approx(26.0)  # other teacher as is
    assert format_table8(t8).loc["Budgeted F=0.0", "Dense kept"] == "0.5/42"
    assert t9.mean.loc[COMPOSITE, "Budgeted F=0.0 [tiny-s]"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match=r"seeds \[0, 0\]"):
        table2([*seeded, seeded[0]])


def test_grid_pretrain_method_is_the_scratch_reference() -> None:
    cells = [
        {"teacher": "t", "method": "pretrain", "ppl": 30.0},
        {"teacher": "t", "method": "kd_full"},
    ]
    assert list(table2(cells).index) == ["Scratch", "KD Full"]


def test_pareto_frontier_hand_example() -> None:
    points = [(20.9, 1.0), (24.3, 1.74), (25.1, 4.05), (26.0, 1.0), (24.5, 1.5), (math.nan, 9.0)]
    # (26, 1.0) is beaten by (20.9, 1.0); (24.5, 1.5) by (24.3, 1.74); NaN is never on it.
    assert pareto_frontier(points) == [0, 1, 2]
    assert pareto_frontier([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # duplicates do not dominate
    assert pareto_frontier([]) == []


def test_write_report_files_round_trip(grid: list[dict[str, Any]], tmp_path: Path) -> None:
    paths = write_report(grid, tmp_path / "report")
    assert list(paths) == FILES
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(FILES)  # no temps
    for name, path in paths.items():
        assert Path(path).stat().st_size > 0, name
        if name.endswith(".png"):
            assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    read = {name: pd.read_csv(paths[f"{name}.csv"], index_col=0) for name in ("table2", "table8")}
    pd.testing.assert_frame_equal(read["table2"], table2(grid))
    pd.testing.assert_frame_equal(read["table8"], table8(grid))
    t9 = pd.read_csv(paths["table9.csv"], index_col=0)
    pd.testing.assert_frame_equal(t9, table9(grid).to_frame())
    report = Path(paths["report.md"]).read_text()
    assert "## Table 2" in report and "| Budgeted F=0.4 | 24.60 | 25.60 |" in report
    assert "](pareto.png)" in report and "](trajectory.png)" in report  # beside report.md
    assert "| Method | PPL tiny-s | PPL tiny-m | Compute | Tok/s | MAC × |" in report


def test_write_report_with_no_results(tmp_path: Path) -> None:
    paths = write_report([], tmp_path)
    assert list(paths) == FILES
    assert all(Path(p).stat().st_size > 0 for p in paths.values())


def test_markdown_table_header_and_separator() -> None:
    frame = pd.DataFrame({"a": ["1", "x|y"], "b": [MISSING, "2"]}, index=["r1", "r2"])
    frame.index.name = "Method"
    lines = markdown_table(frame).splitlines()
    assert lines[:2] == ["| Method | a | b |", "|---|---:|---:|"]
    assert lines[2:] == ["| r1 | 1 | – |", "| r2 | x\\|y | 2 |"]


def test_report_modules_import_no_orchestration_or_tracking() -> None:
    root = Path(__file__).resolve().parents[2] / "tasks"
    for name in ("report_tables.py", "report_figures.py"):
        tree = ast.parse((root / name).read_text())
        roots = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        roots |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
        }
        assert not roots & {"prefect", "mlflow", "torch", "flows"}, name


def test_the_report_says_when_a_budget_is_worse_than_the_warm_start(grid, tmp_path) -> None:
    worse = [cell | {"ppl": 70.0} if cell.get("final_fraction") == 0.0 else cell for cell in grid]
    note = warm_start_note(results_frame(worse), trajectory_frame(worse))
    assert note.startswith("Worse than the untrained warm start (PPL 60.00): Budgeted F=0.0")
    assert "loses its last dense path at step 12 of 21, leaving 9 steps to recover" in note
    assert "Budgeted F=0.4" not in note
    assert note.endswith(".") and not re.search(r"\.\s+[A-Z]", note)  # one sentence
    write_report(worse, tmp_path)
    assert f"**Note.** {note}" in (tmp_path / "report.md").read_text()
    assert warm_start_note(results_frame(grid), trajectory_frame(grid)) is None  # all better


def test_compact_table_fits_a_terminal(grid) -> None:
    shown = display_headers(format_table(table2(grid)))
    text = compact_table(shown, width=100)
    lines = text.splitlines()
    assert lines[0].split() == ["Method", "PPL", "tiny-s", "PPL", "tiny-m", "MAC", "×",
                                "Measured", "×", "Param", "red.", "Compute"]  # fmt: skip
    assert max(map(len, lines)) <= 100 and len(lines) == 2 + 6
    narrow = compact_table(shown, width=60)
    assert max(map(len, narrow.splitlines())) <= 60 and "Compute" not in narrow
    assert compact_table(shown, width=20) == ""  # not even the perplexities fit
