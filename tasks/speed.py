"""Stage: measured inference speed of a compressed student against the dense
(uncompressed) warm-started student, in one process (DESIGN §5)."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.compression import load_compressed, plans_from_manifest, read_manifest
from bl_core.config import config_from_dict
from bl_core.io import atomic_write_json
from bl_core.speed import measure_speed
from bl_core.student import load_pretrained
from tasks.common import record_execution, stage_dir


@task(name="measure-speed", task_run_name="speed-{label}")
def speed_task(
    output_dir: str,
    label: str,
    compressed: dict[str, Any],
    dense_student: dict[str, Any],
    speed: dict[str, Any],
    seq_len: int,
) -> dict[str, Any]:
    """Adapted-module, forward and generation speedups (measured), next to the MAC ratios."""
    record_execution(output_dir, "measure-speed", label)
    s = config_from_dict({"speed": speed}).speed
    payload = {
        "compressed": compressed["fingerprint"],
        "dense": dense_student["fingerprint"],
        "speed": speed,
        "seq_len": seq_len,
    }
    out = stage_dir(output_dir, "measure-speed", payload)
    result = measure_speed(
        load_pretrained(dense_student["model_dir"]).eval(),
        load_compressed(compressed["model_dir"]),
        plans_from_manifest(read_manifest(compressed["model_dir"])),
        num_tokens=s.num_tokens or seq_len,
        seq_len=s.seq_len or seq_len,
        gen_tokens=s.gen_tokens,
        prompt_len=s.prompt_len,
        repeats=s.repeats,
        warmup=s.warmup,
    )
    atomic_write_json(out / "speed.json", result)
    return result
