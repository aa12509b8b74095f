"""The paper's tables (2, 8, 9) and the grid report, built from per-cell result dicts (DESIGN §10).

Pure pandas + matplotlib (figures in ``tasks.report_figures``), no Prefect or MLflow. A *cell* is
the JSON-able result of one teacher × method (× budget) run or of a reference (``teacher`` itself,
the untrained warm-started student ``init``, an optional CE-only student ``scratch``)::

    {"teacher": "tiny-s", "method": "budgeted", "final_fraction": 0.4, "ppl": 23.1,
     "train": {...}, "compression": {...}, "speed": {...}, "icl": {...}, "trajectory": {...}}

Every key but ``method`` may be missing or None: NaN in the frames, an empty CSV field, "–" in
Markdown. A cell without a teacher is shown under the first teacher (the student's warm start).
Cells of one row that differ only in ``seed`` (training seeds) are averaged, number by number.

Per-method columns (Table 2's efficiency half) are teacher-independent in the paper: each value
comes from the **first teacher in ladder order** whose cell has it, later teachers only fill gaps;
Table 8 takes each row whole from the first teacher with compression info. Not a mean over
teachers: measured tokens/s include the teacher forward and fall with teacher size, so a mean
would describe no run that was made.

Without a ``compression`` entry, uncompressed students get what holds by construction: MAC
speedup 1.0 (init, scratch, KD Full, KD LoRA), train compute 1.0 for KD Full (§7's unit), param
reduction 0% for KD Full and KD LoRA (paper Table 2), KD LoRA's structure all kept (merged, §5).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.report_figures import FIGURE_CAPTIONS, write_atomic, write_figures
from tasks.report_figures import pareto_frontier as pareto_frontier  # re-exported
from tasks.report_summary import warm_start_note

Cell = Mapping[str, Any]
TeacherOrder = Sequence[str] | None  # ladder order, smallest teacher first; None: as seen
METHODS = ("teacher", "init", "scratch", "kd_full", "kd_lora", "budgeted")  # paper row order
UNCOMPRESSED_STUDENTS = ("init", "scratch", "kd_full", "kd_lora")
MISSING = "–"
COMPOSITE = "Composite"
BASELINE = "Trivial baseline"  # constant answer or random pick from the list (bl_core.icl)
NO_TEACHER = "(no teacher)"
_LABELS = {"teacher": "Teacher", "init": "Init (warm start)", "scratch": "Scratch",
           "kd_full": "KD Full", "kd_lora": "KD LoRA"}  # fmt: skip
# Metric column -> (cell section, key); the column names are the tables' headers.
_SOURCES = {
    "Train compute": ("train", "train_compute_proxy"),
    "Train tokens/s (measured)": ("train", "tokens_per_s"),
    "Realised F": ("train", "realised_fraction"), "Modules": ("compression", "num_modules"),
    "Dense kept": ("compression", "dense_kept"), "Dense SVD": ("compression", "dense_svd"),
    "Dense dropped": ("compression", "dense_dropped"), "Avg rank": ("compression", "avg_rank"),
    "Infer speedup (MAC)": ("compression", "infer_speedup_mac"),
    "Infer speedup (measured)": ("speed", "modules_speedup_measured"),
    "Forward speedup (measured)": ("speed", "forward_speedup_measured"),
    "Generate speedup (measured)": ("speed", "generate_speedup_measured"),
    "Param red. vs LoRA": ("compression", "param_reduction_vs_lora"),
}  # fmt: skip
RESULT_COLUMNS = (
    "teacher", "method", "label", "final_fraction", "ppl", *_SOURCES,
    "ICL composite", "ICL composite std", "ICL baseline",
)  # fmt: skip
TABLE2_EFFICIENCY = (
    "Train compute", "Train tokens/s (measured)", "Infer speedup (MAC)",
    "Infer speedup (measured)", "Param red. vs LoRA", "Realised F",
)  # fmt: skip
TABLE8_COUNTS = ("Dense kept", "Dense SVD", "Dense dropped")
TABLE8_COLUMNS = (
    "Teacher", "Modules", *TABLE8_COUNTS, "Avg rank", "Infer speedup (MAC)",
    "Infer speedup (measured)", "Forward speedup (measured)", "Generate speedup (measured)",
    "Param red. vs LoRA",
)  # fmt: skip


def _number(value: Any) -> float:
    """A float, or NaN for None, missing or non-numeric values (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _section(cell: Cell, name: str) -> Mapping[str, Any]:
    block = cell.get(name)
    return block if isinstance(block, Mapping) else {}


def _stat(entry: Any, key: str) -> float:
    return _number(entry.get(key)) if isinstance(entry, Mapping) else math.nan


def _method(cell: Cell) -> str:
    # The grid runs the CE-only reference as method "pretrain" (flows/cells.py).
    method = "scratch" if cell.get("method") == "pretrain" else cell.get("method")
    if method not in METHODS:
        raise ValueError(f"cell method={method!r}: must be one of {', '.join(METHODS)}")
    return method


def method_label(cell: Cell) -> str:
    """Row label: "KD Full", "KD LoRA", "Budgeted F=0.4", "Teacher", "Init (warm start)"..."""
    method = _method(cell)
    if method != "budgeted":
        return _LABELS[method]
    fraction = _number(cell.get("final_fraction"))
    if math.isnan(fraction):
        return "Budgeted"
    # The paper writes F=0.0 and F=0.4; finer budgets (0.25) stay exact.
    text = f"{fraction:.1f}" if round(fraction, 1) == fraction else f"{fraction:g}"
    return f"Budgeted F={text}"


def teacher_names(cells: Iterable[Cell], teacher_order: TeacherOrder = None) -> list[str]:
    """Ladder order: ``teacher_order`` first, then unseen teachers in order of first appearance."""
    names = [str(t) for t in teacher_order or ()]
    for cell in cells:
        teacher = cell.get("teacher")
        if teacher is not None and str(teacher) not in names:
            names.append(str(teacher))
    return names or [NO_TEACHER]


def _teacher_of(cell: Cell, teachers: Sequence[str]) -> str:
    teacher = cell.get("teacher")
    return teachers[0] if teacher is None else str(teacher)


def _mean_tree(values: Sequence[Any]) -> Any:
    """Element-wise mean of JSON trees: numbers averaged where any tree has one, lists of equal
    length item by item; keys and any other leaf from the first tree."""
    first = values[0]
    if isinstance(first, Mapping):
        others = [v if isinstance(v, Mapping) else {} for v in values]
        return {key: _mean_tree([v.get(key) for v in others]) for key in first}
    same_shape = all(isinstance(v, list) and len(v) == len(first) for v in values)
    if isinstance(first, list) and same_shape:
        return [_mean_tree(items) for items in zip(*values)]
    numbers = [n for n in map(_number, values) if not math.isnan(n)]
    return sum(numbers) / len(numbers) if numbers else first


def _merge_seeds(key: tuple[str, str], group: list[Cell]) -> Cell:
    """One cell per (teacher, row): the training seeds of one cell are averaged."""
    seeds = [cell.get("seed") for cell in group]
    if len(group) > 1 and (None in seeds or len(set(seeds)) < len(seeds)):
        raise ValueError(
            f"{len(group)} cells for teacher={key[0]!r}, method={key[1]!r} with seeds {seeds}: "
            "expected one cell per training seed"
        )
    if len(group) == 1:
        return group[0]
    keep = {k: group[0].get(k) for k in ("teacher", "method", "final_fraction")}
    return _mean_tree(group) | keep | {"seed": None, "seeds": sorted(seeds)}


def _ordered(cells: Iterable[Cell], teachers: Sequence[str]) -> list[Cell]:
    """One cell per (teacher, row), seeds merged; paper order (references, KD Full, KD LoRA,
    budgets densest first), then ladder order."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((_teacher_of(cell, teachers), method_label(cell)), []).append(cell)

    def order(cell: Cell) -> tuple[int, float, int]:
        fraction = _number(cell.get("final_fraction"))
        budget = math.inf if math.isnan(fraction) else -fraction
        return METHODS.index(_method(cell)), budget, teachers.index(_teacher_of(cell, teachers))

    return sorted((_merge_seeds(key, group) for key, group in groups.items()), key=order)


def _row(cell: Cell, teacher: str, num_modules: float) -> dict[str, Any]:
    """One ``results_frame`` row, with the by-construction values of the module docstring."""
    method = _method(cell)
    out: dict[str, Any] = {"teacher": teacher, "method": method, "label": method_label(cell)}
    out |= {"final_fraction": _number(cell.get("final_fraction")), "ppl": _number(cell.get("ppl"))}
    out |= {column: _stat(_section(cell, s), key) for column, (s, key) in _SOURCES.items()}
    composite = _section(cell, "icl").get("composite")
    out |= {"ICL composite": _stat(composite, "mean"), "ICL composite std": _stat(composite, "std")}
    out["ICL baseline"] = _stat(composite, "baseline")  # the trivial baseline's composite
    defaults: dict[str, float] = {}
    if method == "kd_full":
        defaults["Train compute"] = 1.0
    if method in UNCOMPRESSED_STUDENTS:
        defaults["Infer speedup (MAC)"] = 1.0
    if method in ("kd_full", "kd_lora"):
        defaults["Param red. vs LoRA"] = 0.0
    if method == "kd_lora" and not cell.get("compression"):
        defaults |= {"Modules": num_modules, "Dense kept": num_modules}
        defaults |= {"Dense SVD": 0.0, "Dense dropped": 0.0}
    for column, value in defaults.items():
        out[column] = value if math.isnan(out[column]) else out[column]
    if method != "budgeted":
        out["Realised F"] = math.nan  # the requested-vs-realised pair only exists for budgets
    return out


def results_frame(cells: Sequence[Cell], teacher_order: TeacherOrder = None) -> pd.DataFrame:
    """Tidy form: one row per cell in paper then ladder order, columns ``RESULT_COLUMNS``."""
    teachers = teacher_names(cells, teacher_order)
    counts = [_stat(_section(cell, "compression"), "num_modules") for cell in cells]
    num_modules = max((n for n in counts if not math.isnan(n)), default=math.nan)
    rows = [_row(c, _teacher_of(c, teachers), num_modules) for c in _ordered(cells, teachers)]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def table2(cells: Sequence[Cell], teacher_order: TeacherOrder = None) -> pd.DataFrame:
    """Paper Table 2: "PPL <teacher>" per teacher, then per-method efficiency columns."""
    teachers = teacher_names(cells, teacher_order)
    results = results_frame(cells, teachers)
    labels = pd.Index(list(dict.fromkeys(results["label"])), name="Method")
    ppl = results.pivot(index="label", columns="teacher", values="ppl")
    ppl = ppl.reindex(index=labels, columns=teachers)
    ppl.columns = [f"PPL {t}" for t in teachers]
    # groupby.first skips NaN: the first teacher in ladder order that has the value.
    efficiency = results.groupby("label", sort=False)[list(TABLE2_EFFICIENCY)].first()
    return pd.concat([ppl, efficiency.reindex(labels)], axis=1).astype(float)


def table8(cells: Sequence[Cell], teacher_order: TeacherOrder = None) -> pd.DataFrame:
    """Paper Table 8: compressed structure per method/budget, each row whole from the first
    teacher (ladder order) with compression info; KD LoRA counts as every module kept."""
    results = results_frame(cells, teacher_order)
    structural = results[["Dense kept", "Dense SVD", "Dense dropped", "Avg rank"]].notna()
    rows = results[structural.any(axis=1)].drop_duplicates("label")
    frame = rows.rename(columns={"teacher": "Teacher"}).set_index("label")
    frame = frame[list(TABLE8_COLUMNS)].rename_axis("Method")
    return frame.astype(dict.fromkeys(TABLE8_COLUMNS[1:], float))


@dataclass(frozen=True)
class ICLTable:
    """Paper Table 9: rows = probes then ``COMPOSITE``; columns = "<method label> [<teacher>]".
    Accuracies are fractions in [0, 1]; ``std`` is over demonstration seeds."""

    mean: pd.DataFrame
    std: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """Numeric, a "<column> mean" and "<column> std" pair per column (the CSV form)."""
        parts: dict[str, pd.Series] = {}
        for column in self.mean.columns:
            parts[f"{column} mean"] = self.mean[column]
            parts[f"{column} std"] = self.std[column]
        return pd.DataFrame(parts, index=self.mean.index, dtype=float)

    def formatted(self, percent: bool = True) -> pd.DataFrame:
        """Strings "mean ± std" (in % by default, as in the paper); "–" where not measured."""
        scale, digits = (100.0, 1) if percent else (1.0, 3)

        def text(mean: float, std: float) -> str:
            if math.isnan(mean):
                return MISSING
            body = f"{scale * mean:.{digits}f}"
            return body if math.isnan(std) else f"{body} ± {scale * std:.{digits}f}"

        out = pd.DataFrame(index=self.mean.index)
        for column in self.mean.columns:
            out[column] = [text(m, s) for m, s in zip(self.mean[column], self.std[column])]
        return out


def table9(cells: Sequence[Cell], teacher_order: TeacherOrder = None) -> ICLTable:
    """Per-probe ICL accuracy and the macro composite, one column per cell (a column of "–"
    shows a result that was not measured instead of hiding it)."""
    teachers = teacher_names(cells, teacher_order)
    means: dict[str, dict[str, float]] = {}
    stds: dict[str, dict[str, float]] = {}
    tasks: list[str] = []
    for cell in _ordered(cells, teachers):
        icl = _section(cell, "icl")
        per_task = icl.get("tasks") if isinstance(icl.get("tasks"), Mapping) else {}
        tasks += [task for task in per_task if task not in tasks]
        entries = {**per_task, COMPOSITE: icl.get("composite")}
        column = f"{method_label(cell)} [{_teacher_of(cell, teachers)}]"
        means[column] = {name: _stat(entry, "mean") for name, entry in entries.items()}
        stds[column] = {name: _stat(entry, "std") for name, entry in entries.items()}
    baseline = _icl_baselines(cells)
    if baseline:  # the same queries for every model: one column, the first cell that has it
        means[BASELINE] = baseline
        stds[BASELINE] = dict.fromkeys(baseline, 0.0)  # the same for every seed
    index = pd.Index([*tasks, COMPOSITE], name="Task")
    mean = pd.DataFrame(means, index=index, columns=list(means), dtype=float)
    std = pd.DataFrame(stds, index=index, columns=list(stds), dtype=float)
    return ICLTable(mean=mean, std=std)


def _icl_baselines(cells: Sequence[Cell]) -> dict[str, float]:
    """Per task (and composite) the trivial baseline of bl_core.icl.trivial_baselines."""
    for cell in cells:
        icl = _section(cell, "icl")
        per_task = icl.get("tasks") if isinstance(icl.get("tasks"), Mapping) else {}
        if per_task and all(isinstance(t, Mapping) and "baseline" in t for t in per_task.values()):
            out = {name: _number(t["baseline"]) for name, t in per_task.items()}
            return out | {COMPOSITE: _stat(icl.get("composite"), "baseline")}
    return {}


def trajectory_frame(cells: Sequence[Cell], teacher_order: TeacherOrder = None) -> pd.DataFrame:
    """Controller logs of the budgeted cells: columns teacher, label, step, target, actual."""
    teachers = teacher_names(cells, teacher_order)
    records = []
    for cell in _ordered(cells, teachers):
        for entry in _section(cell, "trajectory").get("step_target_actual") or []:
            if isinstance(entry, Sequence) and len(entry) == 3:  # skip a malformed log line
                step, target, actual = (_number(v) for v in entry)
                teacher, label = _teacher_of(cell, teachers), method_label(cell)
                records.append((teacher, label, step, target, actual))
    return pd.DataFrame(records, columns=["teacher", "label", "step", "target", "actual"])


# Column headers for reading (Markdown, the Prefect and MLflow tables, the terminal): short
# enough that Table 2 of three teachers fits a screen. The CSVs keep the full names.
DISPLAY_HEADERS = {
    "Train compute": "Compute", "Train tokens/s (measured)": "Tok/s",
    "Infer speedup (MAC)": "MAC ×", "Infer speedup (measured)": "Measured ×",
    "Forward speedup (measured)": "Forward ×", "Generate speedup (measured)": "Generate ×",
    "Param red. vs LoRA": "Param red.",
}  # fmt: skip


def display_headers(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with :data:`DISPLAY_HEADERS` column names."""
    return frame.rename(columns=DISPLAY_HEADERS)


def _number_format(column: str) -> Callable[[float], str]:
    if column.startswith("PPL ") or column == "Train compute":
        return lambda v: f"{v:.2f}"
    if "tokens/s" in column:
        return lambda v: f"{v:,.0f}"
    if "speedup" in column:
        return lambda v: f"{v:.2f}×"
    if column.startswith("Param red."):
        return lambda v: f"{100 * v:.1f}%"
    if column == "Realised F":
        return lambda v: f"{v:.3f}"
    if column == "Avg rank":
        return lambda v: f"{v:.1f}"
    return lambda v: f"{v:g}"


def format_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Strings for Markdown: per-column number formats, ``MISSING`` ("–") where NaN/None."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        fmt = _number_format(str(column))
        out[column] = [
            value if isinstance(value, str) else MISSING if pd.isna(value) else fmt(float(value))
            for value in frame[column]
        ]
    return out


def format_table8(frame: pd.DataFrame) -> pd.DataFrame:
    """As :func:`format_table`, with module counts written "9/42" as in the paper."""
    out = format_table(frame.drop(columns="Modules"))
    for column in TABLE8_COUNTS:
        for label, count, total in zip(frame.index, frame[column], frame["Modules"]):
            if not (pd.isna(count) or pd.isna(total)):
                out.loc[label, column] = f"{count:g}/{total:g}"  # a seed mean may be 8.5
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub pipe table of a frame of strings, index first (``tabulate`` is not a dependency)."""

    def row(values: Iterable[Any]) -> str:
        texts = (str(v).replace("|", "\\|").replace("\n", " ") for v in values)
        return "| " + " | ".join(texts) + " |"

    lines = [
        row([frame.index.name or "", *frame.columns]),
        "|" + "|".join(["---"] + ["---:"] * len(frame.columns)) + "|",
    ]
    lines += [row([label, *values]) for label, values in zip(frame.index, frame.to_numpy())]
    return "\n".join(lines) + "\n"


_SECTIONS = {
    "table2": ("Table 2 — quality and efficiency",
               "Validation perplexity per teacher. Efficiency columns are per method, from the "
               "first teacher in ladder order that has them. Compute: training-compute proxy of "
               "the adapted modules, KD Full = 1 (DESIGN §7). Tok/s: measured training tokens/s. "
               "MAC × and Measured ×: inference speedup of the adapted modules over the dense "
               "student, by multiply-accumulates and by wall clock. Param red.: fewer parameters "
               "than LoRA. Realised F: final dense fraction of adapted-module MACs."),
    "table8": ("Table 8 — compressed structure",
               "Per method/budget, from the first teacher with compression info (column Teacher). "
               "KD LoRA deploys merged: every module kept. Speedups over the dense student (§5): "
               "MAC × by multiply-accumulates; Measured ×, Forward × and Generate ×: wall clock of "
               "the adapted modules, a forward pass and generation."),
    "table9": ("Table 9 — in-context-learning probes",
               "Exact-match accuracy (%), mean ± std over demonstration seeds; Composite is the "
               "macro mean over probes (§9). Trivial baseline: the better of always giving the "
               "most frequent answer and picking an item of the input's list at random — "
               "accuracy near it shows no in-context learning."),
}  # fmt: skip


def _teacher_outputs(cells: Sequence[Cell]) -> str:
    """How the distilled cells got their teacher's outputs (DESIGN §6a), as recorded."""
    forms = {_section(c, "train").get("teacher_outputs") for c in cells}
    forms = sorted(f for f in forms if isinstance(f, str))
    return f" Teacher outputs: {'; '.join(forms)}." if forms else ""


def _report_markdown(
    teachers: Sequence[str],
    markdown: Mapping[str, str],
    cells: Sequence[Cell] = (),
    note: str | None = None,
) -> str:
    header = f"Teachers (ladder order): {', '.join(teachers)}.{_teacher_outputs(cells)}"
    parts = ["# Budgeted LoRA grid report", "", header]
    for name, text in markdown.items():
        title, caption = _SECTIONS[name]
        parts += ["", f"## {title}", "", caption, "", text.rstrip("\n")]
        if name == "table2" and note:
            parts += ["", f"**Note.** {note}"]
    parts += ["", "## Figures", ""]
    parts += [f"![{caption}]({name})\n" for name, caption in FIGURE_CAPTIONS.items()]
    return "\n".join(parts)


def write_report(
    cells: Sequence[Cell],
    out_dir: str | os.PathLike[str],
    teacher_order: TeacherOrder = None,
) -> dict[str, str]:
    """Write tables (numeric CSV, formatted Markdown), the tidy ``results.csv``, the figures and
    ``report.md`` into ``out_dir``; return file name -> path. ``report.md`` is written last, so
    its presence means the report is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teachers = teacher_names(cells, teacher_order)
    results = results_frame(cells, teachers)
    t2, t8, t9 = table2(cells, teachers), table8(cells, teachers), table9(cells, teachers)
    tables = {
        "table2": (t2, format_table(t2)),
        "table8": (t8, format_table8(t8)),
        "table9": (t9.to_frame(), t9.formatted()),
    }
    paths = {"results.csv": write_atomic(out / "results.csv", results.to_csv().encode())}
    markdown = {name: markdown_table(display_headers(text)) for name, (_, text) in tables.items()}
    for name, (numeric, _) in tables.items():
        paths[f"{name}.csv"] = write_atomic(out / f"{name}.csv", numeric.to_csv().encode())
        paths[f"{name}.md"] = write_atomic(out / f"{name}.md", markdown[name].encode())
    trajectories = trajectory_frame(cells, teachers)
    paths |= write_figures(results, trajectories, out, teachers)
    note = warm_start_note(results, trajectories)
    report = _report_markdown(teachers, markdown, cells, note).encode()
    paths["report.md"] = write_atomic(out / "report.md", report)
    return paths
