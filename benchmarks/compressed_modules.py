"""Adapted modules alone: dense vs compressed wall-clock, next to the MAC ratio (DESIGN §5).

For each final fraction F the budget controller and the compression planner run on a
meta-device student (:func:`bl_core.plan.plan_budget`, gates open); the deployed forms
it picks (``nn.Linear`` for keep, :class:`~bl_core.modules.LowRankLinear` for drop and
svd) are built with random weights and timed against the dense projections on
``(1, tokens, d_in)`` inputs:

    measured = t(all dense) / t(all compressed)      MAC = Σ d_in d_out / Σ compressed MACs

goal: measured >= 0.9 * MAC. A per-projection breakdown (q/k/v/o/gate/up/down, each
timed on its own, also interleaved) shows where the gap is; GFLOP/s = 2 MACs / time.

    python benchmarks/compressed_modules.py                 # paper student, F = 0.0 and 0.4
    python benchmarks/compressed_modules.py --threads 1 --budgets 0.4 --json out.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import _common as bc
import torch
from torch import nn

from bl_core.config import TARGET_MODULES
from bl_core.forms import ModulePlan
from bl_core.speed import measure_module_speedup

NAME = "compressed_modules"
FULL = bc.Defaults(tokens=1024, repeats=20, warmup=3)
GPU = bc.Defaults(tokens=1024, repeats=20, warmup=5)
QUICK = bc.Defaults(tokens=64, repeats=2, warmup=1)
GOAL_FRACTION_OF_MAC = 0.9

COLUMNS: list[bc.Column] = [
    ("F", "final_fraction", ".2f"),
    ("proj", "group", ""),
    ("n", "num_modules", "d"),
    ("shape", "shape", ""),
    ("forms", "forms", ""),
    ("dense ms", "dense_ms", ".2f"),
    ("comp ms", "compressed_ms", ".2f"),
    ("measured x", "speedup_measured", ".2f"),
    ("MAC x", "speedup_mac", ".2f"),
    ("meas/MAC", "measured_over_mac", ".0%"),
    ("dense GF/s", "dense_gflops", ".1f"),
    ("comp GF/s", "compressed_gflops", ".1f"),
]


def _forms(plans: Sequence[ModulePlan]) -> str:
    counts: dict[str, int] = {}
    for p in plans:
        label = p.form if p.form == "keep" else f"{p.form}{p.rank}"
        counts[label] = counts.get(label, 0) + 1
    return " ".join(f"{n}x{label}" for label, n in sorted(counts.items()))


def _row(
    group: str, final_fraction: float, plans: Sequence[ModulePlan], m: dict[str, float]
) -> dict[str, Any]:
    tokens = m["num_tokens"]
    shapes = sorted({f"{p.d_in}->{p.d_out}" for p in plans})
    return {
        "final_fraction": final_fraction,
        "group": group,
        "num_modules": len(plans),
        "shape": ",".join(shapes) if len(shapes) <= 2 else "mixed",
        "forms": _forms(plans),
        "dense_ms": 1e3 * m["dense_s"],
        "compressed_ms": 1e3 * m["compressed_s"],
        "speedup_measured": m["speedup_measured"],
        "speedup_mac": m["speedup_mac"],
        "measured_over_mac": m["speedup_measured"] / m["speedup_mac"],
        "dense_gflops": 2e-9 * m["dense_macs_per_token"] * tokens / m["dense_s"],
        "compressed_gflops": 2e-9 * m["compressed_macs_per_token"] * tokens / m["compressed_s"],
    }


def measure_budget(
    args: argparse.Namespace, teacher: Any, final_fraction: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole set of adapted modules, then each projection kind on its own."""
    plan, _, plans = bc.plan_for_budget(args, teacher, final_fraction)
    torch.manual_seed(args.seed)  # the same random weights on every run
    dense = [
        nn.Linear(p.d_in, p.d_out, bias=p.bias, device=args.device, dtype=args.dtype) for p in plans
    ]
    compressed = [bc.deployed_module(p, args.device, args.dtype) for p in plans]
    timing = {"num_tokens": args.tokens, "repeats": args.repeats, "warmup": args.warmup}

    def measure(idx: Sequence[int]) -> dict[str, float]:
        return measure_module_speedup(
            [dense[i] for i in idx], [compressed[i] for i in idx], seed=args.seed, **timing
        )

    total = _row("all", final_fraction, plans, measure(range(len(plans))))
    total |= {
        "plan_speedup_mac": plan["infer_speedup_mac"],
        "realised_fraction": plan["realised_fraction"],
        "dense_kept": plan["dense_kept"],
        "dense_svd": plan["dense_svd"],
        "dense_dropped": plan["dense_dropped"],
    }
    groups = []
    kinds = [bc.projection_kind(p.name) for p in plans]
    for kind in [k for k in TARGET_MODULES if k in kinds]:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        groups.append(_row(kind, final_fraction, [plans[i] for i in idx], measure(idx)))
    return total, groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = bc.build_parser(__doc__, FULL, QUICK, GPU, "tokens per module input")
    bc.add_model_args(parser)
    args = bc.resolve(parser, argv)
    bc.setup(args)
    env = bc.environment(args)
    print(bc.format_header("compressed modules: dense vs deployed forms", env))
    teacher = bc.teacher_config(args)
    results, goals = [], []
    for final_fraction in args.budgets:
        total, groups = measure_budget(args, teacher, final_fraction)
        results.append(total | {"per_projection": groups})
        print()
        print(bc.format_table([*groups, total], COLUMNS))
        goals.append(
            bc.goal(
                f"F={final_fraction:g} measured/MAC ({total['speedup_measured']:.2f}x of "
                f"{total['speedup_mac']:.2f}x)",
                total["measured_over_mac"],
                GOAL_FRACTION_OF_MAC,
            )
        )
    settings = bc.common_settings(args) | {
        "model_config": args.model_config or ("quick" if args.quick else "mistral-0.13b"),
        "budgets": args.budgets,
        "plan_steps": args.plan_steps,
    }
    bc.finish(NAME, args, env, settings, results, goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
