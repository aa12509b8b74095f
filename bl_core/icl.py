"""In-context-learning probes: prompting, batched greedy generation, scoring, suite
(DESIGN §9; paper §4.1, Appendix F.1).

Prompt (paper format; prefixes configurable and recorded with every result)::

    Q:<input 1>\\nA:<output 1>\\n\\nQ:<input 2>\\nA:<output 2>\\n\\n ... Q:<query>\\nA:

``num_shots`` demonstrations are drawn per query with an RNG seeded by (task, seed),
never including the query item. Queries are the same for every seed, so the spread
over seeds measures the sampled demonstrations only (Appendix F.1). The model
continues greedily; an answer is correct when the stripped first line of the
continuation equals the expected output exactly (case-sensitive).

Every task is reported next to its trivial baseline (:func:`trivial_baselines`: the better
of a constant answer and a random pick from the input's list), and the composite next to
their mean: accuracy at the baseline is no evidence of in-context learning.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from bl_core.config import ICLConfig
from bl_core.errors import ConfigError, InputError
from bl_core.probes import ProbeItem, check_tasks, generate_task, load_fv_dir, num_available

DEMO_SEPARATOR = "\n\n"
SCORING = "exact match of the stripped first generated line"
NUM_EXAMPLES_KEPT = 3  # generations saved per task, to debug format problems by eye


def build_prompt(
    demonstrations: Sequence[ProbeItem],
    query: str,
    query_prefix: str = "Q:",
    answer_prefix: str = "A:",
) -> str:
    """The paper's prompt: demonstrations separated by a blank line, then the open query."""
    blocks = [f"{query_prefix}{d.input}\n{answer_prefix}{d.output}" for d in demonstrations]
    blocks.append(f"{query_prefix}{query}\n{answer_prefix}")
    return DEMO_SEPARATOR.join(blocks)


def first_line(continuation: str) -> str:
    """The answer the model gave: its first generated line, stripped."""
    return continuation.split("\n", 1)[0].strip()


def is_exact_match(continuation: str, expected: str) -> bool:
    """``" Apple\\nQ:..."`` matches ``"Apple"``; ``"apple"`` and ``"Apples"`` do not."""
    return first_line(continuation) == expected.strip()


def sample_demonstrations(
    items: Sequence[ProbeItem], query_index: int, num_shots: int, rng: random.Random
) -> list[ProbeItem]:
    """``num_shots`` items other than the query. Items with the query's input are
    excluded too: a duplicate (FV files have a few) would reveal the answer."""
    query = items[query_index].input
    candidates = [item for item in items if item.input != query]
    if len(candidates) < num_shots:
        raise ConfigError(
            f"num_shots={num_shots} needs at least {num_shots} items besides the query; "
            f"the task has {len(candidates)}"
        )
    return rng.sample(candidates, num_shots)


def query_indices(task: str, num_items: int, items_per_task: int) -> list[int]:
    """A fixed, seed-independent subset of query items (FV files are ordered, so shuffle)."""
    order = list(range(num_items))
    random.Random(f"bl-icl-queries:{task}").shuffle(order)
    return order[:items_per_task]


def build_task_prompts(
    task: str, items: Sequence[ProbeItem], cfg: ICLConfig, seed: int
) -> list[tuple[str, ProbeItem]]:
    """(prompt, query item) pairs for one task and one demonstration seed."""
    if len(items) <= cfg.num_shots:
        raise ConfigError(
            f"task {task!r} has {len(items)} items; num_shots={cfg.num_shots} needs at least "
            f"{cfg.num_shots + 1} (the demonstrations plus the query)"
        )
    rng = random.Random(f"bl-icl-demos:{task}:{seed}")  # str seeds hash stably (sha512)
    prompts = []
    for q in query_indices(task, len(items), cfg.items_per_task):
        demos = sample_demonstrations(items, q, cfg.num_shots, rng)
        prompt = build_prompt(demos, items[q].input, cfg.query_prefix, cfg.answer_prefix)
        prompts.append((prompt, items[q]))
    return prompts


class _StopAtNewline(StoppingCriteria):
    """Finish a row once its continuation holds a newline: only the first line is scored."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_len :], skip_special_tokens=True
        )
        return torch.tensor(["\n" in t for t in texts], device=input_ids.device)


def _left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), padded on the LEFT so every row's last
    prompt token sits at position T-1 and generation continues all rows together."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer: Any) -> int:
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    return 0  # any id works: padded positions are masked out


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: tqdm | None = None,
) -> list[str]:
    """Greedy continuations (decoded text) of ``prompts``, batched with left padding.

    Prompts are grouped by token length to waste little compute on padding; results
    come back in the input order. ``model`` must provide Hugging Face ``generate``.
    """
    if not callable(getattr(model, "generate", None)):
        raise InputError(f"{type(model).__name__} has no generate(); ICL needs a causal LM")
    device = torch.device(device) if device is not None else _model_device(model)
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first: OOM early
    pad_id = _pad_id(tokenizer)
    outputs: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = _left_pad([encoded[i] for i in batch], pad_id, device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            use_cache=True,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([_StopAtNewline(tokenizer, ids.shape[1])]),
        )
        texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(batch, texts, strict=True):
            outputs[i] = text
        if progress is not None:
            progress.update(len(batch))
    return outputs


def load_task_items(cfg: ICLConfig) -> dict[str, list[ProbeItem]]:
    """Items per task: FV JSON files from ``cfg.data_dir``, else the built-in generators.

    Built-in tasks get ``items_per_task + num_shots`` items (capped at what the task
    has), so every query has enough other items to draw demonstrations from.
    """
    names = check_tasks(cfg.tasks)
    if cfg.data_dir is not None:
        return load_fv_dir(cfg.data_dir, names)
    items = {}
    for name in names:
        wanted = cfg.items_per_task + cfg.num_shots
        available = num_available(name)
        items[name] = generate_task(name, wanted if available is None else min(wanted, available))
    return items


def _summary(per_seed: list[float]) -> dict[str, Any]:
    # Population std (ddof=0) over seeds, recorded as "std_ddof" in the results.
    return {
        "mean": statistics.fmean(per_seed),
        "std": statistics.pstdev(per_seed),
        "per_seed": per_seed,
    }


def trivial_baselines(queries: Sequence[ProbeItem]) -> dict[str, float]:
    """What answering without in-context inference scores on these queries:

    - ``constant``: always giving the most frequent expected answer (its share);
    - ``chance``: picking one of the input's comma-separated items at random when the
      answer is one of them (list tasks: ``1/k``), else 0.
    """
    counts: dict[str, int] = {}
    for item in queries:
        counts[item.output] = counts.get(item.output, 0) + 1
    chance = 0.0
    for item in queries:
        parts = [p.strip() for p in item.input.split(",")]
        if len(parts) > 1 and item.output.strip() in parts:
            chance += 1.0 / len(parts)
    n = max(len(queries), 1)
    return {"constant": max(counts.values(), default=0) / n, "chance": chance / n}


def _score_task(
    task_prompts: dict[int, list[tuple[str, ProbeItem]]], texts: dict[int, list[str]]
) -> dict[str, Any]:
    """Per-seed exact-match accuracy of one task, plus a few generations to eyeball."""
    per_seed = []
    for seed, pairs in task_prompts.items():
        hits = [
            is_exact_match(t, item.output) for t, (_, item) in zip(texts[seed], pairs, strict=True)
        ]
        per_seed.append(sum(hits) / len(hits))
    seed, pairs = next(iter(task_prompts.items()))
    examples = [
        {"input": item.input, "expected": item.output, "generated": text}
        for text, (_, item) in list(zip(texts[seed], pairs, strict=True))[:NUM_EXAMPLES_KEPT]
    ]
    baselines = trivial_baselines([item for _, item in pairs])
    return {
        **_summary(per_seed),
        "num_items": len(pairs),
        "baseline": max(baselines.values()),
        "baselines": baselines,
        "examples": examples,
    }


def _generate_all(
    model: nn.Module,
    tokenizer: Any,
    prompts: dict[str, dict[int, list[tuple[str, ProbeItem]]]],
    cfg: ICLConfig,
    device: torch.device,
    progress_label: str | None = None,
) -> dict[str, dict[int, list[str]]]:
    """Continuations for every (task, seed) prompt. One generate_greedy call over all of
    them, so batches are full and grouped by length across tasks (fewer generate calls)."""
    keys = [(task, seed) for task, by_seed in prompts.items() for seed in by_seed]
    flat = [prompt for task, seed in keys for prompt, _ in prompts[task][seed]]
    progress = tqdm(
        total=len(flat),
        desc=progress_label or "ICL probes",
        unit="prompt",
        disable=not sys.stderr.isatty(),
    )
    with progress:
        texts = generate_greedy(
            model, tokenizer, flat, cfg.max_new_tokens, cfg.batch_size, device, progress
        )
    out: dict[str, dict[int, list[str]]] = {task: {} for task in prompts}
    start = 0
    for task, seed in keys:
        n = len(prompts[task][seed])
        out[task][seed] = texts[start : start + n]
        start += n
    return out


def run_icl_suite(
    model: nn.Module,
    tokenizer: Any,
    cfg: ICLConfig | None = None,
    device: str | torch.device | None = None,
    items: dict[str, list[ProbeItem]] | None = None,
    progress_label: str | None = None,
) -> dict[str, Any]:
    """Run the probe suite; return a JSON-able dict (per task mean/std/per-seed, composite).
    ``progress_label`` names the terminal progress bar (default "ICL probes").

    ``items`` overrides the task data (default: :func:`load_task_items`). ``device``
    defaults to the model's; the model is put in eval mode and restored afterwards.
    """
    cfg = cfg or ICLConfig()
    items = items if items is not None else load_task_items(cfg)
    check_tasks(items)
    device = torch.device(device) if device is not None else _model_device(model)
    prompts = {
        task: {seed: build_task_prompts(task, task_items, cfg, seed) for seed in cfg.seeds}
        for task, task_items in items.items()
    }
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        texts = _generate_all(model, tokenizer, prompts, cfg, device, progress_label)
    finally:
        model.train(was_training)
    tasks = {task: _score_task(prompts[task], texts[task]) for task in prompts}
    composite = [
        statistics.fmean(t["per_seed"][s] for t in tasks.values()) for s in range(len(cfg.seeds))
    ]
    return {
        "tasks": tasks,
        # The mean over seeds of per-seed composites equals the macro mean of task means.
        "composite": _summary(composite)
        | {"baseline": statistics.fmean(t["baseline"] for t in tasks.values())},
        "num_shots": cfg.num_shots,
        "seeds": list(cfg.seeds),
        "items_per_task": cfg.items_per_task,
        "max_new_tokens": cfg.max_new_tokens,
        "format": {
            "query_prefix": cfg.query_prefix,
            "answer_prefix": cfg.answer_prefix,
            "demo_separator": DEMO_SEPARATOR,
            "scoring": SCORING,
        },
        "data": cfg.data_dir or "builtin",
        "std_ddof": 0,
        "wall_seconds": time.perf_counter() - start,
    }
