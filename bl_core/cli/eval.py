"""``bl eval``: perplexity and/or the ICL probe suite for one model (DESIGN §8-§9).

MODEL is a Hugging Face model dir, a compressed student dir (both go through
:func:`bl_core.checkpoint.load_causal_lm`) or a Hub id ``org/name`` (``--revision``).
Settings come from the ``icl`` and ``perplexity`` sections of ``--config`` (defaults
otherwise); flags override them. ``--lm-eval TASKS`` also scores the model with
lm-evaluation-harness and writes the harness's results beside ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bl_core.cli import add_config_arguments, load_config_arguments
from bl_core.errors import ConfigError, InputError
from bl_core.io import atomic_write_json

if TYPE_CHECKING:
    import torch

    from bl_core.config import BudgetedLoRAConfig

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
    p.add_argument("model_dir", metavar="MODEL", help="model dir, compressed student dir or Hub id")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) when MODEL is an id")
    p.add_argument("--tokenizer", help="tokenizer dir for the ICL suite (default: MODEL_DIR)")
    add_config_arguments(p, default=None)  # its icl/perplexity sections give the defaults
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
    p.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="comma-separated lm-evaluation-harness tasks (needs the 'eval' extra)",
    )
    p.add_argument("--lm-eval-include", metavar="DIR", help="directory of extra task YAMLs")
    p.add_argument("--lm-eval-limit", type=int, metavar="N", help="documents per task")
    p.add_argument("--lm-eval-shots", type=int, metavar="K", help="few-shot examples")
    p.add_argument(
        "--out",
        metavar="FILE.json",
        help="write the results here (atomically); lm-eval's go to FILE.lm_eval.json",
    )
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.set_defaults(func=run)


def _resolve_config(args: argparse.Namespace) -> tuple[BudgetedLoRAConfig, bool]:
    """The validated config and whether the ICL suite runs."""
    overrides: dict[str, Any] = {}
    for flag, field in {**_ICL_FLAGS, **_PPL_FLAGS}.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    cfg, _ = load_config_arguments(args, overrides)
    run_icl = args.icl or any(getattr(args, f) is not None for f in _ICL_FLAGS)
    if not run_icl and args.ppl_data is None and not args.lm_eval:
        raise ConfigError(
            "nothing to evaluate: pass --icl, --ppl-data PACKED_DIR and/or --lm-eval TASKS"
        )
    return cfg, run_icl


def _resolve_device(name: str | None) -> torch.device:
    import torch

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


def _lm_eval_path(out: str) -> Path:
    """Where the harness's own results JSON goes: beside ours."""
    return Path(out).with_suffix(".lm_eval.json")


def _run_lm_eval(args: argparse.Namespace, model: Any, tokenizer: Any, device: Any) -> dict:
    from bl_core.harness import run_lm_eval, score_lines

    tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
    harness = run_lm_eval(
        model,
        tokenizer,
        tasks,
        include_path=args.lm_eval_include,
        limit=args.lm_eval_limit,
        num_fewshot=args.lm_eval_shots,
        device=device,
    )
    print("lm-eval (lm-evaluation-harness):")
    print("\n".join(score_lines(harness)))
    path = None
    if args.out:
        path = _lm_eval_path(args.out)
        atomic_write_json(path, harness)
        print(f"wrote {path}")
    return {"tasks": tasks, "results": harness.get("results"), "path": str(path) if path else None}


def run(args: argparse.Namespace) -> int:
    from bl_core.allocator import tune_cpu_allocator
    from bl_core.checkpoint import load_causal_lm
    from bl_core.hub import resolve_model_dir
    from bl_core.icl import run_icl_suite
    from bl_core.perplexity import perplexity

    tune_cpu_allocator()  # again, now that torch is loaded (the heap it tunes is torch's)
    start = time.perf_counter()
    cfg, run_icl = _resolve_config(args)
    from bl_core.validate import validate_eval

    validate_eval(
        args.model_dir, args.ppl_data, args.tokenizer, cfg, run_icl, args.out, args.lm_eval_include
    )
    if run_icl:
        from bl_core.icl import load_task_items

        load_task_items(cfg.icl)  # a malformed ICL file fails before the model
    device = _resolve_device(args.device)
    needs_tokenizer = run_icl or bool(args.lm_eval)
    tokenizer = None
    if needs_tokenizer and args.tokenizer:  # fail before the model
        tokenizer = _load_tokenizer(args.tokenizer)
    model_dir = resolve_model_dir(args.model_dir, args.revision)  # a Hub id: its snapshot
    tokenizer_path = args.tokenizer or model_dir
    if needs_tokenizer and tokenizer is None:
        tokenizer = _load_tokenizer(tokenizer_path)
    sequences = None
    if args.ppl_data is not None:
        from bl_core.packing import load_packed

        sequences = load_packed(args.ppl_data)
    model = load_causal_lm(model_dir, device=device)
    results: dict[str, Any] = {
        "model_dir": str(Path(args.model_dir)) if model_dir == args.model_dir else args.model_dir,
        "revision": args.revision,
        "resolved_dir": str(model_dir),
        "tokenizer": str(tokenizer_path) if needs_tokenizer else None,
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
    if args.lm_eval:
        results["lm_eval"] = _run_lm_eval(args, model, tokenizer, device)
    results["wall_seconds"] = time.perf_counter() - start
    _print_table(results)
    if args.out:
        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0
