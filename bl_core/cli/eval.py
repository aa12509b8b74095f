"""``bl eval``: perplexity and/or the ICL probe suite for one model (DESIGN §8-§9).

MODEL_DIR is a Hugging Face model dir or a compressed student dir (both go through
:func:`bl_core.checkpoint.load_causal_lm`). Settings come from the ``icl`` and
``perplexity`` sections of ``--config`` (defaults otherwise); flags override them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bl_core.config import BudgetedLoRAConfig, apply_overrides, config_from_dict, load_config
from bl_core.errors import ConfigError, InputError
from bl_core.io import atomic_write_json

# flag -> dotted config field; an ICL flag also switches the ICL suite on.
_ICL_FLAGS = {
    "tasks": "icl.tasks",
    "items_per_task": "icl.items_per_task",
    "seeds": "icl.seeds",
    "num_shots": "icl.num_shots",
    "max_new_tokens": "icl.max_new_tokens",
    "fv_dir": "icl.data_dir",
    "batch_size": "icl.batch_size",
    "query_prefix": "icl.query_prefix",
    "answer_prefix": "icl.answer_prefix",
}
_PPL_FLAGS = {"ppl_batch_size": "perplexity.batch_size", "ppl_max_tokens": "perplexity.max_tokens"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="validation perplexity and/or the 19-task ICL probe suite for a model dir",
        description="Evaluate a Hugging Face model dir or a compressed student dir: "
        "perplexity on a packed validation set (--ppl-data) and/or the ICL probes (--icl).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--tokenizer", help="tokenizer dir for the ICL suite (default: MODEL_DIR)")
    p.add_argument("--config", help="YAML whose icl/perplexity sections give the defaults")
    p.add_argument("--ppl-data", metavar="PACKED_DIR", help="packed validation set dir")
    p.add_argument("--ppl-batch-size", type=int)
    p.add_argument("--ppl-max-tokens", type=int, help="score only the first ~N tokens")
    p.add_argument(
        "--icl",
        action="store_true",
        help="run the ICL probe suite (implied by any ICL option below)",
    )
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="subset of the 19 tasks")
    p.add_argument("--items-per-task", type=int, metavar="N")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED")
    p.add_argument("--num-shots", type=int, metavar="K")
    p.add_argument("--max-new-tokens", type=int, metavar="N")
    p.add_argument("--fv-dir", metavar="DIR", help="Function Vectors JSON dir (<task>.json)")
    p.add_argument("--batch-size", type=int, help="prompts per generate() call")
    p.add_argument("--query-prefix", help="default 'Q:' (the original FV code uses 'Q: ')")
    p.add_argument("--answer-prefix", help="default 'A:'")
    p.add_argument("--out", metavar="FILE.json", help="write the results here (atomically)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.set_defaults(func=run)


def _resolve_config(args: argparse.Namespace) -> tuple[BudgetedLoRAConfig, bool]:
    """The validated config and whether the ICL suite runs."""
    cfg = load_config(args.config) if args.config else config_from_dict({})
    overrides: dict[str, Any] = {}
    for flag, field in {**_ICL_FLAGS, **_PPL_FLAGS}.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    run_icl = args.icl or any(getattr(args, f) is not None for f in _ICL_FLAGS)
    if not run_icl and args.ppl_data is None:
        raise ConfigError("nothing to evaluate: pass --icl and/or --ppl-data PACKED_DIR")
    return apply_overrides(cfg, overrides), run_icl


def _resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device={name!r}: {err}") from None


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"cannot load a tokenizer from {path!r}: {err}") from None


def _print_table(results: dict[str, Any]) -> None:
    icl = results.get("icl")
    if icl is not None:
        fmt = icl["format"]
        print(
            f"ICL probes: {icl['num_shots']}-shot, seeds {icl['seeds']}, "
            f"{icl['items_per_task']} items/task, format {fmt['query_prefix']!r}/"
            f"{fmt['answer_prefix']!r}, data {icl['data']}"
        )
        width = max(len(name) for name in icl["tasks"])
        for name, task in icl["tasks"].items():
            print(f"  {name:<{width}}  {task['mean']:.3f} ± {task['std']:.3f}")
        comp = icl["composite"]
        print(f"  {'composite':<{width}}  {comp['mean']:.3f} ± {comp['std']:.3f}")
    ppl = results.get("perplexity")
    if ppl is not None:
        print(
            f"perplexity: {ppl['perplexity']:.3f} (mean NLL {ppl['mean_nll']:.4f} over "
            f"{ppl['num_tokens']} tokens)"
        )


def run(args: argparse.Namespace) -> int:
    from bl_core.checkpoint import load_causal_lm
    from bl_core.icl import run_icl_suite
    from bl_core.perplexity import perplexity

    start = time.perf_counter()
    cfg, run_icl = _resolve_config(args)
    device = _resolve_device(args.device)
    tokenizer_path = args.tokenizer or args.model_dir
    tokenizer = _load_tokenizer(tokenizer_path) if run_icl else None  # fail before the model
    sequences = None
    if args.ppl_data is not None:
        from bl_core.packing import load_packed

        sequences = load_packed(args.ppl_data)
    model = load_causal_lm(args.model_dir, device=device)
    results: dict[str, Any] = {
        "model_dir": str(Path(args.model_dir)),
        "tokenizer": tokenizer_path if run_icl else None,
        "device": str(device),
        "ppl_data": args.ppl_data,
        "perplexity": None,
        "icl": None,
    }
    if sequences is not None:
        ppl_cfg = cfg.perplexity
        results["perplexity"] = perplexity(
            model, sequences, ppl_cfg.batch_size, device, ppl_cfg.max_tokens
        )
    if run_icl:
        results["icl"] = run_icl_suite(model, tokenizer, cfg.icl, device=device)
        results["icl_config"] = cfg.icl.model_dump(mode="json")
    results["wall_seconds"] = time.perf_counter() - start
    _print_table(results)
    if args.out:
        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0
