"""Training checkpoints and trained-student directories.

A checkpoint ``<run>/checkpoints/step-NNNNNNNN/`` holds everything needed to resume
bit-identically on CPU: model weights (safetensors), optimizer and scheduler state and
per-rank RNG states (a torch file read back with ``weights_only=True``), and the step,
data position and controller state (JSON). Each is written to a temporary directory and
renamed, so a directory named ``step-*`` is always complete.

A trained student ``<run>/final/`` is a Hugging Face directory (``config.json`` +
``model.safetensors``); gated students add ``bl_student.json`` describing the adapters,
from which :func:`load_trained_student` rebuilds them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from bl_core.errors import InputError
from bl_core.io import atomic_directory, atomic_write_json
from bl_core.student import gated_modules, inject_gated_lora
from bl_core.weights import assign_weights, empty_model, read_weights, retie, save_weights

STUDENT_META = "bl_student.json"
WEIGHTS = "model.safetensors"
_STEP_PREFIX = "step-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{_STEP_PREFIX}{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX))
    return steps[-1] if steps else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    training_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    json_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write one complete checkpoint atomically and prune older ones."""
    target = checkpoint_dir(run_dir, step)
    with atomic_directory(target, overwrite=True) as tmp:
        save_weights(model, tmp / WEIGHTS)
        torch.save(training_state, tmp / "training_state.pt")
        for rank, rng in enumerate(rng_states):
            torch.save(rng, tmp / f"rng-rank{rank}.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **json_state})
    older = sorted((run_dir / "checkpoints").glob(f"{_STEP_PREFIX}*"))[:-keep_last]
    for path in older:
        shutil.rmtree(path, ignore_errors=True)
    return target


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX)]
    return sorted(steps, reverse=True)


def load_checkpoint(path: Path, model: nn.Module, rank: int = 0) -> tuple[dict, dict, dict]:
    """Load weights into ``model``; return (training_state, rng_state, json_state).

    Every file is read before ``model`` is touched, so a damaged checkpoint (an
    :class:`InputError` naming it) leaves the model as it was and an older one can be tried.
    """
    state = read_weights(path / WEIGHTS)
    try:
        training_state = torch.load(path / "training_state.pt", weights_only=True)
        rng_file = path / f"rng-rank{rank}.pt"
        rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else {}
        json_state = json.loads((path / "state.json").read_text())
    except (OSError, EOFError, json.JSONDecodeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"checkpoint {str(path)!r} is damaged or unreadable: {first}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied parameter is saved under one of its names; the model holds it under both.
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    covered = {name for pair in tied.items() if set(pair) & set(state) for name in pair}
    if set(missing) - covered or unexpected:
        raise InputError(
            f"checkpoint {str(path)!r} does not match the model: missing "
            f"{sorted(set(missing) - covered)[:3]}, unexpected {unexpected[:3]}"
        )
    retie(model, set(state))
    return training_state, rng, json_state


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trained_student(
    model: PreTrainedModel, out_dir: Path, adapter: dict[str, Any] | None
) -> Path:
    """Write the final student; ``adapter`` (rank, lora_alpha, targets, use_gates) for
    gated or LoRA students, ``None`` for plain ones."""
    with atomic_directory(out_dir, overwrite=True) as tmp:
        model.config.save_pretrained(tmp)
        save_weights(model, tmp / WEIGHTS)
        if adapter is not None:
            retentions = {name: m.retention_value for name, m in gated_modules(model)}
            atomic_write_json(tmp / STUDENT_META, {**adapter, "retentions": retentions})
    return out_dir


def is_trained_student_dir(path: str | Path) -> bool:
    return (Path(path) / STUDENT_META).is_file()


def load_trained_student(path: str | Path) -> PreTrainedModel:
    """Rebuild a student saved by :func:`save_trained_student` (gated or plain)."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS).is_file():
        raise InputError(f"{str(path)!r} is not a trained student (config.json, {WEIGHTS})")
    model = empty_model(path)
    meta_path = path / STUDENT_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        inject_gated_lora(
            model,
            rank=meta["rank"],
            lora_alpha=meta["lora_alpha"],
            targets=meta["targets"],
            use_gates=meta["use_gates"],
        )
    return assign_weights(model, path / WEIGHTS)
