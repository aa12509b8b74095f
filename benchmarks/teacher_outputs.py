"""Sparse top-k teacher outputs against the exact ones on a finished grid (DESIGN §6a).

For each teacher of the grid and each k: write the teacher's top-k store over the
sequences the grid's cells read (timed; bytes per position), train every method of the
grid's default cells from that store with the grid's own settings, compress, and compare
the validation perplexity with the grid's exact (online / lockstep) cell:

    python benchmarks/teacher_outputs.py --grid outputs/tiny --k 16 64 256

Prints one row per teacher x method x k (PPL exact, PPL sparse, difference) and a
paper-scale storage estimate; writes JSON to benchmarks/results/teacher_outputs.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bl_core.allocator import tune_cpu_allocator
from bl_core.compression import compress_model
from bl_core.config import config_from_dict
from bl_core.packing import PackedDataset, load_packed
from bl_core.perplexity import perplexity
from bl_core.student import load_pretrained
from bl_core.teacher_outputs import (
    StoredTeacher,
    sequences_read,
    store_bytes_per_position,
    write_teacher_store,
)
from bl_core.train_state import load_trained_student
from bl_core.training import plan_steps, train

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"vocab_size": 32000, "tokens_per_cell": 2_550_000_000}  # presets/paper.yaml


def _cells(grid: Path) -> list[dict[str, Any]]:
    cells = json.loads((grid / "report" / "cells.json").read_text())
    return [c for c in cells if c["method"] in ("kd_full", "kd_lora", "budgeted")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", required=True, help="a finished grid's output dir")
    p.add_argument("--k", nargs="+", type=int, default=[16, 64, 256])
    p.add_argument("--teachers", nargs="+", help="default: every teacher of the grid")
    p.add_argument("--labels", nargs="+", help="cells by label suffix (budgeted-F0.00/s0)")
    p.add_argument("--out", default=str(RESULTS / "teacher_outputs"), help="work dir")
    p.add_argument("--json", default=str(RESULTS / "teacher_outputs.json"))
    args = p.parse_args(argv)
    tune_cpu_allocator()
    grid, work = Path(args.grid).resolve(), Path(args.out)
    state = json.loads((grid / "report" / "grid.json").read_text())  # flows/grid.py
    cfg = config_from_dict(state["config"])
    data = PackedDataset(state["train_data"]["packed_dir"])
    val = load_packed(state["val_data"]["packed_dir"])
    vocab = state["tokenizer"]["vocab_size"]
    steps = plan_steps(cfg.train, data.meta["seq_len"], cfg.train.num_processes)
    reads = [
        {"seed": s, "steps": steps, "micro_batch_size": cfg.train.micro_batch_size}
        | {"grad_accum_steps": cfg.train.grad_accum_steps, "world_size": 1}
        for s in cfg.pipeline.seeds
    ]
    rows = []
    for cell in _cells(grid):
        teacher = state["teacher_refs"][cell["teacher"]]
        if args.teachers and cell["teacher"] not in args.teachers:
            continue
        if args.labels and not any(cell["label"].endswith(x) for x in args.labels):
            continue
        for k in args.k:
            store = work / f"{cell['teacher']}-k{k}"
            start = time.perf_counter()
            if not (store / "meta.json").is_file():
                write_teacher_store(
                    load_pretrained(teacher["model_dir"]),
                    data,
                    sequences_read(reads, len(data)),
                    store,
                    top_k=k,
                    temperature=cfg.kd.temperature,
                    vocab_size=vocab,
                )
            store_s = time.perf_counter() - start
            meta = json.loads((store / "meta.json").read_text())
            cell_cfg = cfg.model_copy(
                update={
                    "train": cfg.train.model_copy(update={"seed": cell["seed"]}),
                    "budget": cfg.budget.model_copy(
                        update={"final_fraction": cell["final_fraction"] or 0.0}
                    ),
                    "kd": cfg.kd.model_copy(update={"teacher_top_k": k}),
                }
            )
            run_dir = work / f"{cell['label'].replace('/', '_')}-k{k}"
            train(
                load_pretrained(state["student_ref"]["model_dir"]),
                None,
                cell["method"],
                data,
                cell_cfg,
                run_dir,
                vocab_size=vocab,
                outputs=StoredTeacher(store, cfg.kd.temperature, vocab),
            )
            model = load_trained_student(run_dir / "final")
            if cell["method"] != "kd_full":
                compress_model(model, cell_cfg.compression)
            ppl = perplexity(model, val, cfg.perplexity.batch_size)["perplexity"]
            row = {
                "teacher": cell["teacher"],
                "label": cell["label"],
                "k": k,
                "ppl_exact": cell["ppl"],
                "ppl_sparse": ppl,
                "ppl_diff": ppl - cell["ppl"],
                "bytes_per_position": meta["bytes_per_position"],
                "store_bytes": meta["bytes"],
                "store_s": store_s,
            }
            rows.append(row)
            print(
                f"{row['label']:28s} k={k:4d}  PPL exact {row['ppl_exact']:8.2f}  sparse "
                f"{ppl:8.2f}  diff {row['ppl_diff']:+7.2f}  {row['bytes_per_position']} B/pos",
                flush=True,
            )
    paper = {
        k: {
            "bytes_per_position": store_bytes_per_position(k, PAPER["vocab_size"]),
            "terabytes_per_teacher": store_bytes_per_position(k, PAPER["vocab_size"])
            * PAPER["tokens_per_cell"]
            / 1e12,
        }
        for k in args.k
    }
    for k, est in paper.items():
        print(f"paper scale, k={k}: {est['bytes_per_position']} B/position, "
              f"{est['terabytes_per_teacher']:.2f} TB per teacher for 2.55B tokens")  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    environment = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(args.json).write_text(
        json.dumps({"rows": rows, "paper_estimate": paper, "environment": environment}, indent=1)
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
