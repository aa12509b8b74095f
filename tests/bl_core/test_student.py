import pytest
import torch
from conftest import make_mistral
from transformers import AutoModelForCausalLM

from bl_core.errors import ConfigError
from bl_core.modules import GatedLoRALinear
from bl_core.student import (
    build_student,
    inject_gated_lora,
    mark_only_lora_trainable,
    select_layers,
)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("first", [0, 1, 2, 3, 4, 5]),
        ("truncated", [0, 1, 2, 3, 4, 5]),
        ("last", [6, 7, 8, 9, 10, 11]),
        ("middle", [3, 4, 5, 6, 7, 8]),
        ("mixed", [0, 2, 4, 7, 9, 11]),
    ],
)
def test_layer_selection_12_to_6(mode, expected):
    assert select_layers(12, 6, mode) == expected


@pytest.mark.parametrize("n", [0, 13])
def test_bad_student_depth_is_a_config_error(n):
    with pytest.raises(ConfigError, match=f"student.num_layers={n}"):
        select_layers(12, n, "mixed")


def test_student_copies_selected_layers_and_reloads(tmp_path):
    teacher = make_mistral(num_layers=6)
    student = build_student(teacher, 3, "mixed")
    assert student.config.bl_teacher_layer_indices == [0, 3, 5]
    for i, j in enumerate([0, 3, 5]):
        torch.testing.assert_close(
            student.model.layers[i].mlp.up_proj.weight, teacher.model.layers[j].mlp.up_proj.weight
        )
        assert student.model.layers[i].self_attn.layer_idx == i  # KV-cache slot renumbered
    torch.testing.assert_close(student.lm_head.weight, teacher.lm_head.weight)
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, student(x).logits)


def test_full_depth_first_selection_equals_teacher():
    teacher = make_mistral(num_layers=4)
    student = build_student(teacher, 4, "first")
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(student(x).logits, teacher(x).logits)


def test_inject_targets_all_projections_in_registration_order(tiny_mistral):
    modules = inject_gated_lora(tiny_mistral, rank=4, lora_alpha=8)
    assert len(modules) == 4 * 7
    assert [n.rsplit(".", 1)[-1] for n, _ in modules[:7]] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert all(isinstance(m, GatedLoRALinear) for _, m in modules)
    names = [n for n, m in tiny_mistral.named_modules() if isinstance(m, GatedLoRALinear)]
    assert names == [n for n, _ in modules]


def test_injected_model_equals_original_until_trained(tiny_mistral):
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        before = tiny_mistral(x).logits
        inject_gated_lora(tiny_mistral, rank=4, lora_alpha=8)
        torch.testing.assert_close(tiny_mistral(x).logits, before)


def test_mark_only_lora_trainable(tiny_mistral):
    inject_gated_lora(tiny_mistral, rank=4, lora_alpha=8, targets=["q_proj", "down_proj"])
    trainable = mark_only_lora_trainable(tiny_mistral)
    assert len(trainable) == 4 * 2 * 3
    frozen = [n for n, p in tiny_mistral.named_parameters() if not p.requires_grad]
    assert "model.embed_tokens.weight" in frozen and "lm_head.weight" in frozen


def test_unknown_target_for_model_is_an_error():
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="q_proj"):
        inject_gated_lora(model, rank=2, lora_alpha=2, targets=["q_proj"])
