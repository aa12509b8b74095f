"""A teacher's lockstep cohort in the grid's process vs split over CPU lanes
(``pipeline.cohort_lanes``, tasks/lanes.py), timed in one process, alternating, on a
finished grid's data, teacher and warm-start student:

    python benchmarks/cohort_lanes.py --grid outputs/tiny --teacher tiny-s --steps 300

``lanes 1`` runs the cohort as the grid does without lanes (all torch threads, one
process); ``lanes N`` runs N one-thread processes, each with its share of the cells and its
own teacher forward. Prints each repeat's wall clock (process start-up included), the
ratio, and whether every cell's final weights are identical between the two (they differ
only by the thread count's rounding; tests/tasks/test_lanes.py checks bit-identity at one
thread each); writes JSON to benchmarks/results/cohort_lanes.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bl_core.allocator import tune_cpu_allocator
from bl_core.config import config_from_dict
from tasks.distill import train_cohort, training_sections

RESULTS = Path(__file__).resolve().parent / "results"


def _cells(state: dict[str, Any], steps: int, seq_len: int) -> list[dict[str, Any]]:
    cfg = config_from_dict(state["config"])
    t = cfg.train
    tokens = steps * t.micro_batch_size * t.grad_accum_steps * seq_len
    config = cfg.model_dump(mode="json")
    config["train"] = config["train"] | {"total_tokens": tokens, "checkpoint_every": 10**9}
    cells = []
    for method in cfg.grid.methods:
        for fraction in cfg.grid.budgets if method == "budgeted" else [None]:
            cells.append(
                {
                    "label": method if fraction is None else f"{method}-F{fraction:.2f}",
                    "method": method,
                    "final_fraction": fraction,
                    "seed": 0,
                    "sections": training_sections(method, config),
                    "student": state["student_ref"],
                }
            )
    return cells


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        p.parent.parent.name: load_file(str(p))
        for p in sorted(out.glob("stages/distill/*/final/*.safetensors"))
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", required=True, help="a finished grid's output dir")
    p.add_argument("--teacher", help="ladder rung (default: the smallest)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per cell")
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=str(RESULTS / "cohort_lanes.json"))
    args = p.parse_args(argv)
    tune_cpu_allocator()
    state = json.loads((Path(args.grid) / "report" / "grid.json").read_text())
    teacher = state["teacher_refs"][args.teacher or min(
        state["teacher_refs"], key=lambda n: state["teacher_refs"][n]["num_params"]
    )]  # fmt: skip
    seq_len = json.loads((Path(state["train_data"]["packed_dir"]) / "meta.json").read_text())[
        "seq_len"
    ]
    cells = _cells(state, args.steps, seq_len)
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for lanes in (1, args.lanes):
            work = Path(tempfile.mkdtemp(prefix=f"bl-lanes{lanes}-"))
            start = time.perf_counter()
            result = train_cohort(
                str(work), teacher, cells, state["train_data"], state["tokenizer"], lanes
            )
            seconds = time.perf_counter() - start
            if set(result["cells"].values()) != {"ok"}:
                raise SystemExit(f"cohort cells failed: {result['cells']}")
            rows.append({"repeat": repeat, "lanes": lanes, "seconds": seconds, "work": str(work),
                         "teacher_forwards": result["forwards"]})  # fmt: skip
            print(f"repeat {repeat} lanes {lanes}: {len(cells)} cells x {args.steps} steps "
                  f"{seconds:7.1f} s", flush=True)  # fmt: skip
    one = [r for r in rows if r["lanes"] == 1]
    many = [r for r in rows if r["lanes"] == args.lanes]
    a, b = _weights(Path(one[0]["work"])), _weights(Path(many[0]["work"]))
    max_diff = max(
        float((a[run][k].float() - b[run][k].float()).abs().max()) for run in a for k in a[run]
    )
    for r in rows:
        shutil.rmtree(r["work"], ignore_errors=True)
    t_one = sum(r["seconds"] for r in one)
    t_many = sum(r["seconds"] for r in many)
    print(f"1 lane {t_one:.1f} s, {args.lanes} lanes {t_many:.1f} s: speedup "
          f"{t_one / t_many:.2f}x (teacher {teacher['name']}, {torch.get_num_threads()} "
          f"threads in this process)")  # fmt: skip
    print(f"largest final-weight difference between the two: {max_diff:.3g}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "teacher": teacher["name"], "steps": args.steps, "lanes": args.lanes, "rows": rows,
        "speedup": t_one / t_many, "max_weight_difference": max_diff,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
