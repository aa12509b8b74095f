"""Stage: student construction (DESIGN §2), warm-started from the smallest teacher."""

from __future__ import annotations

from typing import Any

from prefect import task

from bl_core.config import config_from_dict
from bl_core.io import atomic_directory
from bl_core.ladder import warm_started_student
from bl_core.student import load_model_config
from bl_core.tokenizer import load_tokenizer
from tasks.common import model_fingerprint, record_execution, stage_dir


@task(name="build-student", task_run_name="build-student")
def student_task(
    output_dir: str, student: dict[str, Any], smallest_teacher: dict[str, Any], tokenizer: dict
) -> dict[str, Any]:
    """Save the warm-started student as a Hugging Face directory; return its reference."""
    record_execution(output_dir, "build-student", smallest_teacher["name"])
    cfg = config_from_dict({"student": student})
    payload = {"student": student, "teacher": smallest_teacher["fingerprint"]}
    out = stage_dir(output_dir, "build-student", payload)
    if not (out / "config.json").is_file():
        model = warm_started_student(smallest_teacher, cfg)
        with atomic_directory(out, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            load_tokenizer(tokenizer["tokenizer_dir"]).save_pretrained(tmp)
    config = load_model_config(out)
    return {
        "name": "init",
        "model_dir": str(out),
        "fingerprint": model_fingerprint(out),
        "layer_indices": list(config.bl_teacher_layer_indices),
        "from_teacher": smallest_teacher["name"],
    }
