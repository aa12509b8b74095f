"""The model card (README.md) of an exported compressed student: what the budget did to
it (DESIGN §4-§5, paper Table 8) and how to load, evaluate and serve it."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

_FORM_NAMES = {"keep": "dense (kept)", "svd": "low-rank (svd + LoRA)", "drop": "low-rank (LoRA)"}


def realised_fraction(modules: list[dict[str, Any]]) -> float:
    """``sum_m alpha_m c_m / sum_m c_m``: the dense fraction the controller ended at."""
    dense = sum(m["d_in"] * m["d_out"] for m in modules)
    return sum(m["alpha"] * m["d_in"] * m["d_out"] for m in modules) / dense if dense else 0.0


def _speed_lines(speed: dict[str, Any] | None) -> list[str]:
    if not speed:
        return [
            "| measured speedups | not measured when this directory was written (the grid's "
            "`measure-speed` stage reports them; `bl export SRC OUT --speed speed.json` "
            "adds them here) |"
        ]
    lines = []
    for key, label in (
        ("modules_speedup_measured", "measured speedup, adapted modules"),
        ("forward_speedup_measured", "measured speedup, whole forward"),
        ("generate_speedup_measured", "measured speedup, generation"),
    ):
        if key in speed:
            lines.append(f"| {label} | {speed[key]:.2f}x |")
    where = f"{speed.get('device', '?')}, {speed.get('dtype', '?')}"
    lines.append(f"| measured on | {where}, {speed.get('num_threads', '?')} threads |")
    return lines


def _usage(path_hint: str, remote: bool) -> list[str]:
    trust = ", trust_remote_code=True" if remote else ""
    serve = " --trust-remote-code" if remote else ""
    lines = [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{path_hint}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{path_hint}"{trust})',
        'ids = tokenizer("Q:apple\\nA:", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))",
        "```",
        "",
        f"Serve: `vllm serve {path_hint}{serve}`.",
    ]
    if remote:
        lines += [
            "",
            "`trust_remote_code=True` runs `modeling_budgeted_lora.py` from this directory: "
            "the stock architecture with the low-rank projections listed in `config.json` "
            "(`compressed_modules`). With the Budgeted LoRA project installed it is not needed.",
        ]
    return lines


def model_card(
    config: PretrainedConfig, manifest: dict[str, Any], speed: dict[str, Any] | None = None
) -> str:
    """Markdown with a Hub metadata header; ``speed``: a ``measure-speed`` result, if any."""
    s, modules = manifest["summary"], manifest["modules"]
    remote = bool(getattr(config, "auto_map", None))
    requested = manifest.get("final_fraction")
    base = config.model_type.removeprefix("budgeted_lora_")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [budgeted-lora, distillation, low-rank, compressed]",
        "---",
        "",
        "# Budgeted LoRA compressed student",
        "",
        f"A {config.num_hidden_layers}-layer {base} student distilled with Budgeted LoRA and "
        "compressed after training: each adapted projection is a dense linear, or two stacked "
        "low-rank linears (see *Budgeted LoRA: Distillation as Structured Compute Allocation "
        "for Efficient Inference*, Sabry & Belz).",
        "",
        "| | |",
        "|---|---|",
    ]
    if manifest.get("label"):
        lines.append(f"| run | `{manifest['label']}` |")
    if manifest.get("method"):
        lines.append(f"| method | {manifest['method']} |")
    if requested is not None:
        budget = f"{requested:.2f}"
    elif manifest.get("method") in ("kd_lora", "kd_full"):
        budget = f"none ({manifest['method']}: no budget)"
    else:
        budget = "not recorded"
    lines += [
        f"| budget F requested | {budget} |",
        f"| dense fraction realised (of adapted-module MACs) | {realised_fraction(modules):.3f} |",
        f"| modules dense kept / svd / dropped | {s['dense_kept']} / {s['dense_svd']} / "
        f"{s['dense_dropped']} of {s['num_modules']} |",
        f"| average hardened LoRA rank | {s['avg_rank']:.1f} |",
        f"| average deployed low-rank rank | {s['avg_deployed_rank']:.1f} |",
        f"| inference speedup (MACs of the adapted modules) | {s['infer_speedup_mac']:.2f}x |",
        f"| parameter reduction vs LoRA | {100 * s['param_reduction_vs_lora']:.1f}% |",
        *_speed_lines(speed),
        "",
        *_usage(".", remote),
        "",
        "## Structure",
        "",
        "| module | form | rank | alpha |",
        "|---|---|---|---|",
    ]
    for m in modules:
        rank = m["rank"] if m["form"] != "keep" else "-"
        lines.append(f"| `{m['name']}` | {_FORM_NAMES[m['form']]} | {rank} | {m['alpha']:.3f} |")
    return "\n".join(lines) + "\n"
