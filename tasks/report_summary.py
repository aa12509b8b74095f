"""The report in a sentence and in one screen: the note a reader needs when a budgeted
student ends worse than its warm start, and Table 2 in the width of a terminal.

Pure pandas, like ``tasks.report_tables`` (which writes the note into ``report.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tasks.report_figures import removal_step


def warm_start_note(results: pd.DataFrame, trajectories: pd.DataFrame) -> str | None:
    """One sentence when budgeted students end with a higher perplexity than the untrained
    warm start they began from, and why: the steps left after the controller's last removal
    (read off the trajectory). None when every budget beats the warm start."""
    init = results[(results["method"] == "init") & results["ppl"].notna()]
    if init.empty:
        return None
    init_ppl = float(init["ppl"].iloc[0])
    budgets = results[(results["method"] == "budgeted") & (results["ppl"] > init_ppl)]
    if budgets.empty:
        return None
    clauses = []
    for label, rows in budgets.groupby("label", sort=False):
        ppl = " / ".join(f"{p:.2f}" for p in rows["ppl"])
        clause = f"{label} (PPL {ppl} for {' / '.join(rows['teacher'])})"
        run = trajectories[trajectories["label"] == label]
        run = run[run["teacher"] == run["teacher"].iloc[0]] if len(run) else run
        done = None
        if len(run):
            final = float(run["target"].iloc[-1])
            done = removal_step(list(run["step"]), list(run["actual"]), final)
        if done is None:
            clauses.append(f"{clause} never reaches its budget")
            continue
        total = int(run["step"].max()) + 1  # steps are logged from 0
        clauses.append(
            f"{clause} loses its last dense path at step {done:g} of {total}, "
            f"leaving {total - int(done)} steps to recover"
        )
    return (
        f"Worse than the untrained warm start (PPL {init_ppl:.2f}): "
        + "; ".join(clauses)
        + " — too few training steps after the removals for the low-rank paths to take over "
        "(trajectory.png shows when; more `train.total_tokens` closes the gap)."
    )


def compact_table(table2: pd.DataFrame, width: int = 100) -> str:
    """Table 2 as aligned plain text that fits ``width`` columns (a terminal): the method,
    PPL per teacher, then MAC and measured speedup, param reduction and train compute, as
    many of those as fit; "" when not even the perplexities fit. ``table2`` is the
    formatted frame with display headers (``display_headers(format_table(...))``)."""
    ppl = [c for c in table2.columns if str(c).startswith("PPL ")]
    wanted = [c for c in ("MAC ×", "Measured ×", "Param red.", "Compute") if c in table2]
    text = table2[[*ppl, *wanted]].reset_index()
    text = text.rename(columns={text.columns[0]: "Method"})

    def widths(columns: list[str]) -> list[int]:
        return [max(len(c), *(len(str(v)) for v in text[c])) for c in columns]

    columns = ["Method", *[c for c in text.columns if c != "Method"]]
    while columns and sum(widths(columns)) + 2 * (len(columns) - 1) > width:
        columns.pop()
    if len(columns) < 1 + len(ppl):
        return ""
    sizes = widths(columns)

    def line(values: Sequence[str]) -> str:
        cells = [str(v).ljust(w) if k == 0 else str(v).rjust(w)
                 for k, (v, w) in enumerate(zip(values, sizes))]  # fmt: skip
        return "  ".join(cells).rstrip()

    rows = [line(columns), line(["-" * w for w in sizes])]
    rows += [line(values) for values in text[columns].to_numpy()]
    return "\n".join(rows) + "\n"
