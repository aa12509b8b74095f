"""Scoring a model with the ecosystem's evaluation harness, lm-evaluation-harness
(``lm-eval``, the optional ``eval`` extra): the model object the project loaded (a
compressed student included) is handed to ``HFLM(pretrained=model, tokenizer=...)``, so
the harness scores exactly the deployed model, with no second load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bl_core.errors import InputError

INSTALL_HINT = "pip install -e '.[eval]' (or pip install 'lm-eval[hf]')"


def _import_harness() -> Any:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise InputError(
            f"--lm-eval needs lm-evaluation-harness, which is not importable here ({err}): "
            f"{INSTALL_HINT}"
        ) from None
    return lm_eval, HFLM, TaskManager


def run_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The harness's results for ``tasks`` (its own JSON-able dict: ``results``,
    ``configs``, ``versions``, ``n-shot``, ...). ``include_path``: a directory of extra task
    YAMLs; ``limit``: documents per task."""
    lm_eval, hflm, task_manager_cls = _import_harness()
    from lm_eval.utils import handle_non_serializable

    # Indexing lm-eval's ~15k built-in task YAMLs takes seconds: only when the tasks asked
    # for are not all in include_path.
    task_manager = None
    if include_path is not None:
        task_manager = task_manager_cls(include_path=include_path, include_defaults=False)
    if task_manager is None or any(t not in task_manager.all_tasks for t in tasks):
        task_manager = task_manager_cls(include_path=include_path)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        where = f" or in {include_path!r}" if include_path else " (add --lm-eval-include DIR)"
        raise InputError(f"--lm-eval: unknown task(s) {', '.join(unknown)} in lm-eval{where}")
    lm = hflm(
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",  # lm-eval cannot tell from a compressed student's model_type
        batch_size=batch_size,
        device=str(device),
    )
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        log_samples=False,
    )
    return json.loads(json.dumps(results, default=handle_non_serializable))


def score_lines(results: dict[str, Any]) -> list[str]:
    """``task  metric  value ± stderr`` per reported metric, for the console."""
    lines = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, comma, filt = key.partition(",")  # "acc,none": metric, filter
            if not comma or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            err = f" ± {stderr:.3f}" if isinstance(stderr, int | float) else ""
            lines.append(f"  {task:<24} {metric:<10} {value:.3f}{err}")
    return lines
