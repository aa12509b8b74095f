"""Embedded-ladder rungs with tied embeddings (``teachers[].arch.tie_word_embeddings``):
the pretrained teacher is saved once and reloads tied, and the config-only parameter
counts that pick the smallest rung see the tie."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bl_core.config import apply_overrides, config_from_dict
from bl_core.data import prepare_data
from bl_core.ladder import prepare_teacher, rung_num_params, warm_started_student
from bl_core.preset_files import resolve_config
from bl_core.student import load_pretrained
from bl_core.validate import _arch_numbers, _num_params


def _tied_micro():
    cfg, _ = resolve_config("micro")
    return apply_overrides(
        cfg,
        {
            "pretrain.total_tokens": 4096,
            "teachers": [
                {
                    "name": "micro-tied",
                    "arch": {
                        "hidden_size": 32,
                        "num_layers": 2,
                        "num_heads": 2,
                        "num_kv_heads": 1,
                        "intermediate_size": 64,
                        "max_position_embeddings": 64,
                        "tie_word_embeddings": True,
                    },
                }
            ],
        },
    )


def test_parameter_counts_see_the_tie():
    cfg = _tied_micro()
    teacher = cfg.teachers[0]
    untied = teacher.model_copy(
        update={"arch": teacher.arch.model_copy(update={"tie_word_embeddings": False})}
    )
    vocab, hidden = cfg.tokenizer.vocab_size, teacher.arch.hidden_size
    tied_count, untied_count = rung_num_params(teacher, vocab), rung_num_params(untied, vocab)
    assert untied_count - tied_count == vocab * hidden  # one vocab x hidden matrix less
    # the torch-free count used to pick the smallest rung agrees with the meta-device model
    assert _num_params(_arch_numbers(teacher, None, vocab)) == tied_count
    assert _num_params(_arch_numbers(untied, None, vocab)) == untied_count


def test_an_untied_rung_dumps_and_keys_as_before_the_field_existed():
    """Stage keys hash the dumped teacher: an untied rung's dump has no new field, so a
    store made before ``tie_word_embeddings`` existed is found again."""
    cfg = _tied_micro()
    tied = cfg.model_dump(mode="json")["teachers"][0]["arch"]
    assert tied["tie_word_embeddings"] is True
    untied_cfg, _ = resolve_config("micro")
    dumped = untied_cfg.model_dump(mode="json")
    assert all("tie_word_embeddings" not in t["arch"] for t in dumped["teachers"])
    assert config_from_dict(dumped) == untied_cfg  # and it reads back to the same config
    assert config_from_dict(cfg.model_dump(mode="json")) == cfg


@pytest.mark.slow
def test_a_tied_rung_pretrains_saves_once_and_reloads_tied(tmp_path):
    cfg = _tied_micro()
    data = prepare_data(cfg, tmp_path / "data")
    teacher = prepare_teacher(cfg.teachers[0], cfg, data, tmp_path / "teacher")
    model = load_pretrained(teacher["model_dir"])
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    saved = load_file(f"{teacher['model_dir']}/model.safetensors")
    assert sum(1 for name in saved if name.endswith(("lm_head.weight", "embed_tokens.weight"))) == 1
    # the student warm-started from this teacher shares its one matrix too
    student = warm_started_student(teacher, cfg)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(
        student.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=0
    )
    assert teacher["num_params"] == sum(p.numel() for p in model.parameters())
