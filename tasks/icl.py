"""Stage: the 19-probe in-context-learning suite (DESIGN §9)."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.checkpoint import load_causal_lm
from bl_core.config import config_from_dict
from bl_core.icl import run_icl_suite
from bl_core.io import atomic_write_json
from bl_core.tokenizer import load_tokenizer
from tasks.common import record_execution, stage_dir


@task(name="evaluate-icl", task_run_name="icl-{label}")
def icl_task(
    output_dir: str, label: str, model: dict[str, Any], tokenizer: dict[str, Any], icl: dict
) -> dict[str, Any]:
    """Per-task accuracy (mean/std over demonstration seeds) and the macro composite."""
    record_execution(output_dir, "evaluate-icl", label)
    cfg = config_from_dict({"icl": icl})
    payload = {"model": model["fingerprint"], "tokenizer": tokenizer["fingerprint"], "icl": icl}
    out = stage_dir(output_dir, "evaluate-icl", payload)
    result = run_icl_suite(
        load_causal_lm(model["model_dir"]),
        load_tokenizer(tokenizer["tokenizer_dir"]),
        cfg.icl,
        progress_label=f"{label} icl",
    )
    atomic_write_json(out / "icl.json", result)
    return result
