"""The teacher ladder (DESIGN §1): checkpoints given by path, or Mistral-style models
(pre-norm, RoPE, SwiGLU, GQA) pretrained from scratch on the corpus, and the student
warm-started from the smallest rung."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, MistralConfig, PreTrainedModel

from bl_core.config import BudgetedLoRAConfig, ModelArchConfig, TeacherConfig
from bl_core.data import DataArtifacts
from bl_core.errors import ConfigError, InputError
from bl_core.hub import resolve_model_dir
from bl_core.packing import PackedDataset
from bl_core.student import build_student, load_model_config, load_pretrained
from bl_core.tokenizer import check_shared_vocabulary, load_tokenizer, separator_id
from bl_core.tracking import MetricsLogger
from bl_core.training import read_summary, train


def arch_to_config(arch: ModelArchConfig, vocab_size: int, eos_id: int, pad_id: int | None):
    """A Hugging Face Mistral config for an embedded-ladder architecture."""
    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position_embeddings,
        sliding_window=None,
        tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def _random_model(config, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def prepare_teacher(
    teacher: TeacherConfig,
    cfg: BudgetedLoRAConfig,
    data: DataArtifacts,
    run_dir: str | Path,
    logger: MetricsLogger | None = None,
) -> dict[str, Any]:
    """Return ``{"name", "model_dir", "num_layers", "num_params", ...}`` for one rung.

    A checkpoint teacher (a directory, or a Hub id resolved to its local snapshot) is checked
    (config, shared vocabulary) and used in place; an ``arch`` teacher is pretrained into
    ``run_dir/final`` (resumable, not redone).
    """
    if teacher.path:
        model_dir = resolve_model_dir(teacher.path, teacher.revision, f"teacher {teacher.name!r}")
        config = load_model_config(model_dir)
        check_shared_vocabulary(
            [load_tokenizer(model_dir), load_tokenizer(data.tokenizer_dir)],
            [teacher.path, data.tokenizer_dir],
        )
        return _describe(teacher.name, model_dir, config, {})
    run_dir = Path(run_dir)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    config = arch_to_config(
        teacher.arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    if read_summary(run_dir) is None:
        model = _random_model(config, cfg.pretrain.seed)
        tc = cfg.pretrain
        if teacher.pretrain_tokens is not None:
            tc = tc.model_copy(update={"total_tokens": teacher.pretrain_tokens})
        train(
            model,
            None,
            "pretrain",
            PackedDataset(data.train_dir),
            cfg,
            run_dir,
            vocab_size=len(tokenizer),
            train_cfg=tc,
            logger=logger,
            separator_id=separator_id(tokenizer) if tc.curriculum != "natural" else None,
            progress_label=f"{teacher.name} pretrain",
        )
    final = run_dir / "final"
    if not (final / "tokenizer_config.json").is_file():
        tokenizer.save_pretrained(final)  # so the teacher dir is usable on its own
    return _describe(teacher.name, str(final), config, read_summary(run_dir) or {})


def _describe(name: str, model_dir: str, config, summary: dict[str, Any]) -> dict[str, Any]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        "name": name,
        "model_dir": model_dir,
        "num_layers": config.num_hidden_layers,
        "num_params": sum(p.numel() for p in model.parameters()),
        "pretrain_summary": summary,
    }


def rung_num_params(teacher: TeacherConfig, vocab_size: int) -> int:
    """A rung's parameter count from its config alone (meta device: no weights, no
    pretraining), so a single run can tell the smallest rung before preparing it."""
    if teacher.path:
        model_dir = resolve_model_dir(teacher.path, teacher.revision, f"teacher {teacher.name!r}")
        config = load_model_config(model_dir)
    else:
        config = arch_to_config(teacher.arch, vocab_size, 0, None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def smallest(teachers: list[dict[str, Any]]) -> dict[str, Any]:
    """The rung every student is warm-started from, whatever teacher distils into it."""
    if not teachers:
        raise ConfigError("teachers: the ladder is empty; name at least one teacher")
    return min(teachers, key=lambda t: t["num_params"])


def warm_started_student(smallest_teacher: dict[str, Any], cfg: BudgetedLoRAConfig):
    """The student of DESIGN §2 built from the smallest teacher's checkpoint."""
    teacher = load_pretrained(smallest_teacher["model_dir"])
    return build_student(teacher, cfg.student.num_layers, cfg.student.layer_selection)


def scratch_student(model_dir: str | Path, seed: int, num_layers: int | None = None):
    """Random weights in the architecture of ``model_dir`` (depth cut to ``num_layers``):
    the from-scratch reference student."""
    config = load_model_config(model_dir)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:num_layers]
    return _random_model(config, seed)


def teacher_by_name(cfg: BudgetedLoRAConfig, name: str) -> TeacherConfig:
    for teacher in cfg.teachers:
        if teacher.name == name:
            return teacher
    known = ", ".join(t.name for t in cfg.teachers) or "none"
    raise ConfigError(f"teacher {name!r} is not in the ladder (known: {known})")


def load_teacher(info: dict[str, Any]) -> PreTrainedModel:
    if not Path(info["model_dir"]).is_dir():
        raise InputError(f"teacher {info['name']!r}: {info['model_dir']!r} does not exist")
    return load_pretrained(info["model_dir"])
