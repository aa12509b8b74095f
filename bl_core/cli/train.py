"""``bl train``: one training run (teacher x method x budget) from a config or preset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bl_core.config import BudgetedLoRAConfig
from bl_core.data import prepare_data
from bl_core.ladder import (
    load_teacher,
    prepare_teacher,
    scratch_student,
    smallest,
    teacher_by_name,
    warm_started_student,
)
from bl_core.packing import PackedDataset
from bl_core.preset_files import load_with_overrides
from bl_core.training import train
from bl_core.validate import check_output_dir, validate_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="one run: prepare data and teachers, then train a student",
        description="Prepare the data and the teacher ladder (pretraining embedded teachers), "
        "build the warm-started student and train it by one method. Finished stages and runs "
        "are reused; an interrupted run resumes from its last checkpoint.",
    )
    p.add_argument("--config", default="micro", help="preset name or YAML path (default micro)")
    p.add_argument(
        "--method",
        default="budgeted",
        choices=["pretrain", "kd_full", "kd_lora", "budgeted"],
        help="pretrain trains the from-scratch reference student with cross-entropy",
    )
    p.add_argument("--teacher", help="ladder rung to distil from (default: the largest)")
    p.add_argument("--final-fraction", type=float, help="budget F for --method budgeted")
    p.add_argument("--out", help="output directory (default outputs/<preset>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=run)


def run_dir_name(teacher: str, method: str, cfg: BudgetedLoRAConfig) -> str:
    suffix = f"-F{cfg.budget.final_fraction:.2f}" if method == "budgeted" else ""
    return f"{teacher}/{method}{suffix}" if method != "pretrain" else "scratch"


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.final_fraction is not None:
        overrides.append(f"budget.final_fraction={args.final_fraction}")
    cfg, preset = load_with_overrides(args.config, overrides)
    out = Path(args.out or Path("outputs") / preset)
    if args.teacher:
        teacher_by_name(cfg, args.teacher)  # a clear error before any work
    validate_config(cfg, grid=False)  # issue 17: everything knowable, before any work
    check_output_dir(out)
    data = prepare_data(cfg, out / "data")
    print(f"data: {data.root} (vocab {data.vocab_size}, val tokens {data.val_tokens})")
    ladder = [prepare_teacher(t, cfg, data, out / "teachers" / t.name) for t in cfg.teachers]
    for info in ladder:
        print(f"teacher {info['name']}: {info['model_dir']} ({info['num_params']:,} params)")
    base = smallest(ladder)
    largest = max(ladder, key=lambda t: t["num_params"])
    name = args.teacher or largest["name"]
    info = next(t for t in ladder if t["name"] == name)
    if args.method == "pretrain":
        student = scratch_student(base["model_dir"], cfg.train.seed, cfg.student.num_layers)
        teacher = None
    else:
        student, teacher = warm_started_student(base, cfg), load_teacher(info)
    run_dir = out / "runs" / run_dir_name(name, args.method, cfg)
    summary = train(
        student,
        teacher,
        args.method,
        PackedDataset(data.train_dir),
        cfg,
        run_dir,
        vocab_size=data.vocab_size,
    )
    print(json.dumps(summary, indent=2))
    print(f"trained student: {run_dir / 'final'}")
    print(f"summary: {run_dir / 'summary.json'}  metrics: {run_dir / 'metrics.jsonl'}")
    return 0
