"""Whole student: forward latency and greedy generation, compressed vs dense (DESIGN §5).

For each final fraction F, the student's adapted projections are replaced by the deployed
forms of the compression plan (random weights), and a dense twin of the same
architecture is built (:func:`bl_core.speed.dense_twin`). Both are timed, interleaved,
by :func:`bl_core.speed.measure_model_speedup`:

- forward: one pass over ``(batch, tokens)`` random ids, no KV cache;
- generate: greedy decoding with a KV cache, exactly ``--gen-tokens`` new tokens after a
  ``--prompt-len`` prompt (tokens/s counts the new tokens; the prefill is included).

Each ratio is compared with the end-to-end MAC limit
(:func:`bl_core.speed.end_to_end_mac_limit`: attention and LM head included, evaluated at
``tokens`` for the forward and at ``prompt_len + gen_tokens`` for generation), and with
the adapted-modules MAC ratio of the paper.

    python benchmarks/end_to_end.py
    python benchmarks/end_to_end.py --budgets 0.0 --gen-tokens 128 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import Any

import _common as bc
import torch

from bl_core.speed import dense_twin, end_to_end_mac_limit, measure_model_speedup

NAME = "end_to_end"
FULL = bc.Defaults(tokens=1024, repeats=5, warmup=1)
GPU = bc.Defaults(tokens=1024, repeats=20, warmup=3)
QUICK = bc.Defaults(tokens=32, repeats=2, warmup=1)

COLUMNS: list[bc.Column] = [
    ("F", "final_fraction", ".2f"),
    ("fwd ms dense", "forward_ms_dense", ".1f"),
    ("fwd ms comp", "forward_ms_compressed", ".1f"),
    ("fwd x", "forward_speedup_measured", ".2f"),
    ("fwd limit", "forward_mac_limit", ".2f"),
    ("fwd meas/lim", "forward_measured_over_limit", ".0%"),
    ("gen tok/s dense", "generate_tokens_per_s_dense", ".1f"),
    ("gen tok/s comp", "generate_tokens_per_s_compressed", ".1f"),
    ("gen x", "generate_speedup_measured", ".2f"),
    ("gen limit", "generate_mac_limit", ".2f"),
    ("gen meas/lim", "generate_measured_over_limit", ".0%"),
    ("modules MAC", "modules_speedup_mac", ".2f"),
]


def compressed_student(args: argparse.Namespace, teacher: Any, cfg: Any, plans: Sequence) -> Any:
    """A random student whose adapted projections are the plan's deployed forms."""
    model = bc.random_student(teacher, cfg, args.device, args.dtype)
    for p in plans:
        parent_name, _, child = p.name.rpartition(".")
        setattr(
            model.get_submodule(parent_name), child, bc.deployed_module(p, args.device, args.dtype)
        )
    return model.eval()


def measure_budget(args: argparse.Namespace, teacher: Any, final_fraction: float) -> dict:
    plan, cfg, plans = bc.plan_for_budget(args, teacher, final_fraction)
    torch.manual_seed(args.seed)  # the same random weights on every run
    compressed = compressed_student(args, teacher, cfg, plans)
    dense = dense_twin(compressed)
    speed = measure_model_speedup(
        dense,
        compressed,
        seq_len=args.tokens,
        gen_tokens=args.gen_tokens,
        prompt_len=args.prompt_len,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
    )
    fwd_limit = end_to_end_mac_limit(compressed.config, plans, args.tokens)
    gen_limit = end_to_end_mac_limit(compressed.config, plans, args.prompt_len + args.gen_tokens)
    del dense, compressed
    gc.collect()
    return {
        "final_fraction": final_fraction,
        "realised_fraction": plan["realised_fraction"],
        "dense_kept": plan["dense_kept"],
        "dense_svd": plan["dense_svd"],
        "dense_dropped": plan["dense_dropped"],
        **speed,
        "forward_mac_limit": fwd_limit,
        "forward_measured_over_limit": speed["forward_speedup_measured"] / fwd_limit,
        "generate_mac_limit": gen_limit,
        "generate_measured_over_limit": speed["generate_speedup_measured"] / gen_limit,
        "modules_speedup_mac": plan["infer_speedup_mac"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = bc.build_parser(__doc__, FULL, QUICK, GPU, "sequence length of the timed forward")
    bc.add_model_args(parser)
    parser.add_argument("--gen-tokens", type=int, help="new tokens per generation (default 64)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default 64)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences (default 1)")
    args = bc.resolve(parser, argv)
    args.gen_tokens = args.gen_tokens or (8 if args.quick else 64)
    args.prompt_len = args.prompt_len or (8 if args.quick else 64)
    for flag in ("gen_tokens", "prompt_len", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be >= 1")
    bc.setup(args)
    env = bc.environment(args)
    print(bc.format_header("end to end: compressed vs dense student", env))
    teacher = bc.teacher_config(args)
    longest = max(args.tokens, args.prompt_len + args.gen_tokens)
    if longest > teacher.max_position_embeddings:
        parser.error(
            f"--tokens / --prompt-len + --gen-tokens reach {longest} positions, more than the "
            f"model's max_position_embeddings={teacher.max_position_embeddings}"
        )
    results = [measure_budget(args, teacher, f) for f in args.budgets]
    print()
    print(bc.format_table(results, COLUMNS))
    print(
        "\nlimit = whole-model MACs dense / compressed (attention + LM head included); "
        "'modules MAC' = adapted projections only (the paper's figure)"
    )
    settings = bc.common_settings(args) | {
        "model_config": args.model_config or ("quick" if args.quick else "mistral-0.13b"),
        "budgets": args.budgets,
        "plan_steps": args.plan_steps,
        "gen_tokens": args.gen_tokens,
        "prompt_len": args.prompt_len,
        "batch_size": args.batch_size,
    }
    bc.finish(NAME, args, env, settings, results, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
