"""One teacher forward per batch for all of a teacher's cells (DESIGN §6a), timed in one
process: the cells of one teacher trained one after another, each running the teacher
itself (``kd.teacher_outputs: online``), against the same cells in one lockstep cohort
(``shared``), alternating, on a finished grid's data, teacher and warm-start student:

    python benchmarks/teacher_sharing.py --grid outputs/tiny --teacher tiny-m --steps 100

Prints each repeat's wall clock, the ratio, and whether every cell's final weights are
bit-identical between the two; writes JSON to benchmarks/results/teacher_sharing.json.
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
from bl_core.cohort import CohortMember, train_cohort
from bl_core.config import config_from_dict
from bl_core.packing import PackedDataset
from bl_core.student import load_pretrained
from bl_core.training import train

RESULTS = Path(__file__).resolve().parent / "results"


def _cell_configs(cfg: Any, seq_len: int, steps: int) -> list[tuple[str, str, Any]]:
    tokens = steps * cfg.train.micro_batch_size * cfg.train.grad_accum_steps * seq_len
    cells = []
    for method in cfg.grid.methods:
        fractions = cfg.grid.budgets if method == "budgeted" else [None]
        for fraction in fractions:
            update = {"train": cfg.train.model_copy(update={"total_tokens": tokens})}
            if fraction is not None:
                update["budget"] = cfg.budget.model_copy(update={"final_fraction": fraction})
            label = method if fraction is None else f"{method}-F{fraction:.2f}"
            cells.append((label, method, cfg.model_copy(update=update)))
    return cells


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((run_dir / "final").glob("*.safetensors"))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", required=True, help="a finished grid's output dir")
    p.add_argument("--teacher", help="ladder rung (default: the largest)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per cell")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=str(RESULTS / "teacher_sharing.json"))
    args = p.parse_args(argv)
    tune_cpu_allocator()
    state = json.loads((Path(args.grid) / "report" / "grid.json").read_text())
    cfg = config_from_dict(state["config"])
    rung = args.teacher or cfg.teachers[-1].name
    teacher_dir = state["teacher_refs"][rung]["model_dir"]
    data = PackedDataset(state["train_data"]["packed_dir"])
    vocab = state["tokenizer"]["vocab_size"]
    cells = _cell_configs(cfg, data.meta["seq_len"], args.steps)
    student_dir = state["student_ref"]["model_dir"]
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for mode in ("online", "shared"):
            work = Path(tempfile.mkdtemp(prefix=f"bl-sharing-{mode}-"))
            teacher = load_pretrained(teacher_dir).eval()
            start = time.perf_counter()
            if mode == "online":
                for label, method, c in cells:
                    train(load_pretrained(student_dir), teacher, method, data, c,
                          work / label, vocab_size=vocab)  # fmt: skip
                forwards = None
            else:
                members = [
                    CohortMember(label, load_pretrained(student_dir), method, c, work / label)
                    for label, method, c in cells
                ]
                results, counts = train_cohort(members, teacher, data, vocab_size=vocab)
                failed = [k for k, v in results.items() if isinstance(v, Exception)]
                if failed:
                    raise SystemExit(f"cohort members failed: {failed}")
                forwards = counts
            seconds = time.perf_counter() - start
            rows.append({"repeat": repeat, "mode": mode, "seconds": seconds, "work": str(work),
                         "teacher_forwards": forwards})  # fmt: skip
            print(f"repeat {repeat} {mode:6s} {len(cells)} cells x {args.steps} steps: "
                  f"{seconds:7.1f} s", flush=True)  # fmt: skip
    identical = {}
    online = [r for r in rows if r["mode"] == "online"]
    shared = [r for r in rows if r["mode"] == "shared"]
    for label, _, _ in cells:
        a, b = _weights(Path(online[0]["work"]) / label), _weights(Path(shared[0]["work"]) / label)
        identical[label] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for r in rows:
        shutil.rmtree(r["work"], ignore_errors=True)
    t_online = sum(r["seconds"] for r in online)
    t_shared = sum(r["seconds"] for r in shared)
    print(f"online {t_online:.1f} s, shared {t_shared:.1f} s over {args.repeats} repeats: "
          f"shared / online = {t_shared / t_online:.3f} (teacher {rung}, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip
    print("final weights bit-identical per cell:", identical)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "teacher": rung, "steps": args.steps, "cells": [c[0] for c in cells], "rows": rows,
        "ratio_shared_over_online": t_shared / t_online, "identical": identical,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }, indent=1))  # fmt: skip
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
