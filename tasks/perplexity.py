"""Stage: validation perplexity (DESIGN §8) of any model the grid produces."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.checkpoint import load_causal_lm
from bl_core.io import atomic_write_json
from bl_core.packing import load_packed
from bl_core.perplexity import perplexity
from tasks.common import record_execution, stage_dir


@task(name="evaluate-perplexity", task_run_name="perplexity-{label}")
def perplexity_task(
    output_dir: str, label: str, model: dict[str, Any], val_data: dict[str, Any], settings: dict
) -> dict[str, Any]:
    """exp(token-weighted mean NLL) over the fixed validation tokens."""
    record_execution(output_dir, "evaluate-perplexity", label)
    payload = {"model": model["fingerprint"], "val": val_data["fingerprint"], "cfg": settings}
    out = stage_dir(output_dir, "evaluate-perplexity", payload)
    result = perplexity(
        load_causal_lm(model["model_dir"]),
        load_packed(val_data["packed_dir"]),
        batch_size=settings["batch_size"],
        max_tokens=settings.get("max_tokens"),
        progress_label=f"{label} perplexity",
    )
    atomic_write_json(out / "perplexity.json", result)
    return result
