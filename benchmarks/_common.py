"""Shared helpers of the benchmark scripts: CLI, environment header, plans, tables, JSON.

Every script measures both sides of each ratio in one process, interleaved round by
round after warm-up (:func:`bl_core.speed.time_interleaved`), and reports the median
of the repeats next to the analytic figure it should approach (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

import bl_core
from bl_core.allocator import tune_cpu_allocator
from bl_core.config import BudgetedLoRAConfig, apply_overrides, config_from_dict
from bl_core.forms import ModulePlan, choose_form
from bl_core.modules import LowRankLinear
from bl_core.plan import plan_budget
from bl_core.student import load_model_config, select_layers, student_config

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Other processes' share of the CPU, measured over 1 s before a run, above which the
# figures get a warning (the load average would count the previous benchmark too).
BUSY_WARNING = 0.2
PAPER_MODEL_CONFIG = Path(bl_core.__file__).parent / "presets" / "models" / "mistral-0.13b.json"

# --quick: the paper model's proportions (kv = hidden / 4, ffn = 4 hidden, r / hidden
# about 1/8) at toy size, so every code path runs in seconds; its figures mean nothing.
QUICK_MODEL: dict[str, Any] = {
    "model_type": "mistral",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 256,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
QUICK_LORA = {"student_layers": 2, "rank": 16, "lora_alpha": 32.0, "plan_steps": 100}


@dataclass(frozen=True)
class Defaults:
    """Per-script measurement defaults (tokens per call, timed repeats, warm-up rounds)."""

    tokens: int
    repeats: int
    warmup: int


# -- command line ------------------------------------------------------------------------
def build_parser(
    description: str,
    full: Defaults,
    quick: Defaults,
    gpu: Defaults | None = None,
    tokens_help: str = "tokens per call",
) -> argparse.ArgumentParser:
    """The flags every script shares; ``None`` defaults are resolved by :func:`resolve`."""
    gpu = gpu or full
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="auto: bfloat16 on GPU, float32 on CPU",
    )
    p.add_argument(
        "--tokens",
        type=int,
        help=f"{tokens_help} (default {full.tokens} on CPU, {gpu.tokens} on GPU, "
        f"{quick.tokens} with --quick)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help=f"timed rounds, median reported (default {full.repeats} CPU, {gpu.repeats} GPU, "
        f"{quick.repeats} --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help=f"untimed rounds first (default {full.warmup} CPU, {gpu.warmup} GPU, "
        f"{quick.warmup} --quick)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    p.add_argument(
        "--json",
        dest="json_path",
        help="where to write the JSON result (default benchmarks/results/NAME-DEVICE.json)",
    )
    p.add_argument(
        "--quick", action="store_true", help="toy model, few tokens, 2 repeats: a smoke run"
    )
    p.set_defaults(_defaults=(full, quick, gpu))
    return p


def add_model_args(p: argparse.ArgumentParser, budgets: bool = True, student: bool = True) -> None:
    """Model and adapter flags; unset ones take the config defaults (paper setting)."""
    p.add_argument(
        "--model-config", help=f"teacher config.json (default {PAPER_MODEL_CONFIG.name})"
    )
    if student:
        p.add_argument("--student-layers", type=int, help="default 6 (2 with --quick)")
        p.add_argument(
            "--layer-selection",
            choices=["first", "truncated", "middle", "last", "mixed"],
            help="default mixed",
        )
    p.add_argument("--rank", type=int, help="LoRA rank r (default 128, 16 with --quick)")
    p.add_argument("--lora-alpha", type=float, help="default 2r (256, 32 with --quick)")
    if budgets:
        p.add_argument(
            "--budgets", default="0.0,0.4", help="final dense fractions F (default 0.0,0.4)"
        )
        p.add_argument(
            "--plan-steps", type=int, help="controller schedule length (default 1000, quick 100)"
        )


def resolve(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and fill device, dtype and the CPU / GPU / quick defaults."""
    args = p.parse_args(argv)
    full, quick, gpu = args._defaults
    del args._defaults
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    args.dtype = {
        "auto": torch.bfloat16 if args.device.type == "cuda" else torch.float32,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
    }[args.dtype]
    chosen = quick if args.quick else gpu if args.device.type == "cuda" else full
    for field in ("tokens", "repeats", "warmup"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(chosen, field))
    if args.threads is None and args.quick:
        args.threads = 1  # smoke runs stay light on a shared machine
    for name in ("tokens", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name}={value}: must be >= 1")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup}: must be >= 0")
    if hasattr(args, "budgets"):
        try:
            values = [float(b) for b in str(args.budgets).split(",") if b.strip()]
            args.budgets = list(dict.fromkeys(values))  # each F once, in the order given
        except ValueError:
            p.error(f"--budgets={args.budgets!r}: expected comma-separated numbers, e.g. 0.0,0.4")
        if not args.budgets or any(not 0.0 <= b <= 1.0 for b in args.budgets):
            p.error(f"--budgets={args.budgets}: need at least one value, each in [0, 1]")
    if hasattr(args, "rank") and args.quick:
        if args.rank is not None and args.lora_alpha is None:
            args.lora_alpha = 2.0 * args.rank  # an explicit rank keeps lora_alpha = 2r
        for key, value in QUICK_LORA.items():
            if getattr(args, key, None) is None and hasattr(args, key):
                setattr(args, key, value)
    if getattr(args, "plan_steps", 1) is None:
        args.plan_steps = 1000
    return args


def setup(args: argparse.Namespace) -> None:
    """Threads, seeds and (on CPU) the allocator, before anything is built."""
    if args.device.type == "cpu":
        args.cpu_allocator_tuned = tune_cpu_allocator()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


# -- environment header ------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Share of all cores busy over ``interval_s`` (from /proc/stat), sampled before this
    script does any work: whatever it measures is other processes. ``None`` off Linux."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])  # guest time is already inside user/nice

    try:
        idle0, total0 = sample()
        time.sleep(interval_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else 1.0 - (idle1 - idle0) / total


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the figures were measured on; the load average says how far to trust them."""
    cores = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env: dict[str, Any] = {
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_cores": cores,
        "cpu_cores_usable": affinity,
        "load_average": load,
        "cpu_busy_before_start": _cpu_busy_fraction() if args.device.type == "cpu" else None,
        "torch_version": torch.__version__,
        "transformers_version": _version("transformers"),
        "peft_version": _version("peft"),
        "python_version": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "device": str(args.device),
        "dtype": str(args.dtype).removeprefix("torch."),
        "git_commit": _git_commit(),
        "quick": bool(args.quick),
        "cpu_allocator_tuned": getattr(args, "cpu_allocator_tuned", False),
    }
    if args.device.type == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name(args.device)
        env["cuda_version"] = torch.version.cuda
    return env


def format_header(title: str, env: dict[str, Any]) -> str:
    load = env["load_average"]
    load_s = " ".join(f"{x:.2f}" for x in load) if load else "n/a"
    lines = [
        f"== {title} ==",
        f"cpu: {env['cpu_model']} ({env['cpu_cores_usable']}/{env['cpu_cores']} cores usable), "
        f"load average {load_s}",
        f"torch {env['torch_version']}, transformers {env['transformers_version']}, "
        f"peft {env['peft_version']}, threads {env['num_threads']}, device {env['device']}"
        + (f" ({env['gpu_name']})" if "gpu_name" in env else "")
        + f", dtype {env['dtype']}, commit {env['git_commit']}"
        + (", glibc allocator tuned" if env.get("cpu_allocator_tuned") else ""),
    ]
    busy = env.get("cpu_busy_before_start")
    if busy is not None:
        lines[1] += f", {busy:.0%} busy before start"
        if busy > BUSY_WARNING:
            lines.append(
                f"WARNING: other processes kept {busy:.0%} of the CPU busy just before this run: "
                "CPU figures are not trustworthy"
            )
    if env["quick"]:
        lines.append("QUICK (smoke) run: toy shapes, figures are meaningless")
    return "\n".join(lines)


# -- model, plan and deployed modules ------------------------------------------------------
def teacher_config(args: argparse.Namespace) -> PretrainedConfig:
    """``--model-config``, else the paper's 0.13B teacher (or the toy one with --quick)."""
    if args.model_config:
        return load_model_config(args.model_config)
    if args.quick:
        return AutoConfig.for_model(**QUICK_MODEL)
    return load_model_config(PAPER_MODEL_CONFIG)


def method_config(
    args: argparse.Namespace, final_fraction: float | None = None, **overrides: Any
) -> BudgetedLoRAConfig:
    """The config defaults with the command-line model / adapter / budget flags applied."""
    flags = {
        "student.num_layers": getattr(args, "student_layers", None),
        "student.layer_selection": getattr(args, "layer_selection", None),
        "lora.rank": args.rank,
        "lora.lora_alpha": args.lora_alpha,
        "budget.final_fraction": final_fraction,
    }
    if args.rank is not None and args.lora_alpha is None:
        flags["lora.lora_alpha"] = 2.0 * args.rank  # the paper's lora_alpha = 2r
    values = {k: v for k, v in flags.items() if v is not None} | overrides
    return apply_overrides(config_from_dict({}), values)


def module_plans(plan: dict[str, Any], cfg: BudgetedLoRAConfig) -> list[ModulePlan]:
    """:class:`ModulePlan` objects from :func:`bl_core.plan.plan_budget`'s module list."""
    plans = []
    for m in plan["modules"]:
        _, k = choose_form(m["alpha"], cfg.compression)
        svd_rank = min(k, m["d_in"], m["d_out"]) if m["form"] == "svd" else 0
        plans.append(
            ModulePlan(
                name=m["name"],
                d_in=m["d_in"],
                d_out=m["d_out"],
                alpha=m["alpha"],
                form=m["form"],
                lora_rank=m["rank"] - svd_rank if m["form"] != "keep" else cfg.lora.rank,
                svd_rank=svd_rank,
                bias=False,
            )
        )
    return plans


def plan_for_budget(
    args: argparse.Namespace, teacher: PretrainedConfig, final_fraction: float
) -> tuple[dict[str, Any], BudgetedLoRAConfig, list[ModulePlan]]:
    """Controller + compression plan (all gates open) on a meta-device student."""
    cfg = method_config(args, final_fraction)
    plan = plan_budget(teacher, cfg, total_steps=args.plan_steps)
    plans = module_plans(plan, cfg)
    mac = sum(p.dense_macs for p in plans) / sum(p.compressed_macs for p in plans)
    assert math.isclose(mac, plan["infer_speedup_mac"], rel_tol=1e-9), (mac, plan)
    return plan, cfg, plans


def deployed_module(plan: ModulePlan, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The compressed form of one module with random weights (speed ignores values)."""
    if plan.form == "keep":
        return nn.Linear(plan.d_in, plan.d_out, bias=plan.bias, device=device, dtype=dtype)
    return LowRankLinear(plan.d_in, plan.d_out, plan.rank, plan.bias, device=device, dtype=dtype)


def random_student(
    teacher: PretrainedConfig, cfg: BudgetedLoRAConfig, device: torch.device, dtype: torch.dtype
) -> PreTrainedModel:
    """The student's architecture (``cfg.student`` layers of ``teacher``), random weights."""
    indices = select_layers(
        teacher.num_hidden_layers, cfg.student.num_layers, cfg.student.layer_selection
    )
    model = AutoModelForCausalLM.from_config(student_config(teacher, indices))
    return model.to(device=device, dtype=dtype).eval()


def projection_kind(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``."""
    return name.rsplit(".", 1)[-1]


# -- output ------------------------------------------------------------------------------
Column = tuple[str, str, str]  # (header, key, format spec)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A fixed-width text table; missing values print as ``-``."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    body = [[cell(r, k, s) for _, k, s in columns] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, (h, _, _) in enumerate(columns)]
    line = "  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


def goal(name: str, measured: float, threshold: float, higher_is_better: bool = True) -> dict:
    """One goal check, e.g. measured/MAC >= 0.9."""
    passed = measured >= threshold if higher_is_better else measured <= threshold
    return {
        "name": name,
        "measured": measured,
        "threshold": threshold,
        "comparison": ">=" if higher_is_better else "<=",
        "passed": bool(passed),
    }


def reported(name: str, measured: float) -> dict:
    """A figure printed beside the goals but judged by none (``passed`` is ``None``)."""
    return {
        "name": name,
        "measured": measured,
        "threshold": None,
        "comparison": None,
        "passed": None,
    }


def format_goals(goals: Sequence[dict[str, Any]]) -> str:
    lines = []
    for g in goals:
        if g["passed"] is None:
            lines.append(f"  {g['name']}: {g['measured']:.3f} (reported, no goal)")
            continue
        verdict = "meets goal" if g["passed"] else "MISSES GOAL"
        lines.append(
            f"  {g['name']}: {g['measured']:.3f} (goal {g['comparison']} {g['threshold']:g}) "
            f"-> {verdict}"
        )
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def finish(
    name: str,
    args: argparse.Namespace,
    env: dict[str, Any],
    settings: dict[str, Any],
    results: list[dict[str, Any]],
    goals: list[dict[str, Any]],
) -> dict[str, Any]:
    """Print the goal verdicts, write the JSON (``--json`` or benchmarks/results/)."""
    judged = [g for g in goals if g["passed"] is not None]
    if judged:
        print("\ngoals:\n" + format_goals(judged))
    if len(judged) < len(goals):
        print("\nalso reported:\n" + format_goals([g for g in goals if g["passed"] is None]))
    payload = {
        "benchmark": name,
        "environment": env,
        "settings": settings,
        "results": results,
        "goals": goals,
    }
    suffix = "-quick" if args.quick else ""
    default = RESULTS_DIR / f"{name}-{args.device.type}{suffix}.json"
    path = write_json(args.json_path or default, payload)
    print(f"\nwrote {path}")
    return payload


def common_settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tokens", "repeats", "warmup", "seed", "threads", "quick")
    return {k: getattr(args, k) for k in keys} | {
        "device": str(args.device),
        "dtype": str(args.dtype).removeprefix("torch."),
    }


def in_grad_mode(fn: Callable[[], object]) -> Callable[[], object]:
    """:func:`bl_core.speed.time_interleaved` runs under ``inference_mode``; training-style
    callables (forward + backward) switch it off for their own body."""

    def run() -> object:
        with torch.inference_mode(False), torch.enable_grad():
            return fn()

    return run
