"""Stage: post-training compression (DESIGN §5) of a gated or LoRA student."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.compression import compress_model, read_manifest, save_compressed
from bl_core.config import config_from_dict
from bl_core.export import is_exported_dir
from bl_core.tokenizer import load_tokenizer
from bl_core.train_state import load_trained_student
from tasks.common import model_fingerprint, record_execution, stage_dir


@task(name="compress", task_run_name="compress-{label}")
def compress_task(
    output_dir: str,
    label: str,
    trained: dict[str, Any],
    compression: dict,
    lora_rank: int,
    tokenizer: dict[str, Any],
    method: str = "budgeted",
) -> dict[str, Any]:
    """Harden gates, choose drop/svd/keep per module, save a Hugging Face model directory
    (config.json with each module's form and rank, safetensors, modeling code, model card,
    manifest; :mod:`bl_core.export`).

    KD LoRA students (retention 1, no gates) come out fully merged: every module kept, a
    plain stock checkpoint.
    """
    record_execution(output_dir, "compress", label)
    cfg = config_from_dict({"compression": compression})
    payload = {"trained": trained["fingerprint"], "compression": compression, "rank": lora_rank}
    out = stage_dir(output_dir, "compress", payload)
    if not is_exported_dir(out):  # absent, or written in the earlier format: (re)write it
        model = load_trained_student(trained["model_dir"])
        plans = compress_model(model, cfg.compression)
        extra = {"label": label, "method": method}
        if method == "budgeted":  # the requested F, for the model card
            extra["final_fraction"] = (trained.get("summary") or {}).get("final_fraction")
        save_compressed(
            model,
            plans,
            out,
            lora_rank,
            extra=extra,
            overwrite=True,
            tokenizer=load_tokenizer(tokenizer["tokenizer_dir"]),
        )
    summary = read_manifest(out)["summary"]
    if method == "kd_lora":
        # The paper's Table 2 measures against the LoRA model itself: KD LoRA is 0% by
        # definition. What merging its adapters would save is kept beside it.
        summary = summary | {
            "param_reduction_vs_lora": 0.0,
            "param_reduction_merged": summary["param_reduction_vs_lora"],
        }
    return {
        "model_dir": str(out),
        "fingerprint": model_fingerprint(out),
        "summary": summary,
        "manifest_path": str(out / "bl_manifest.json"),
    }
