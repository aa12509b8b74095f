"""Loading any model this project produces or consumes, by directory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bl_core.compression import is_compressed_dir, load_compressed
from bl_core.errors import InputError
from bl_core.integrity import check_weights_dir
from bl_core.student import load_pretrained
from bl_core.train_state import is_trained_student_dir, load_trained_student


def load_causal_lm(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A compressed student (manifest), a trained gated/LoRA student (``bl_student.json``)
    or a plain Hugging Face model directory."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a model directory" if path.exists() else "does not exist"
        raise InputError(f"model directory {str(path)!r} {what}")
    check_weights_dir(path)  # a damaged file is named, not a SafetensorError traceback
    if is_compressed_dir(path):
        return load_compressed(path, device=device)
    if is_trained_student_dir(path):
        return load_trained_student(path).to(device)
    if (path / "config.json").is_file():
        return load_pretrained(path).to(device).eval()
    raise InputError(
        f"{str(path)!r} is neither a Hugging Face model dir (config.json) nor a compressed "
        "student (bl_manifest.json)"
    )
