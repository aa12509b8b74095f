"""Trainer behaviour on a tiny model: every method learns, adapters leave dense weights
alone, the budget bites, resume is exact, and bad runs stop with clear errors."""

import pytest
import torch
from conftest import make_mistral, make_tokenizer
from safetensors.torch import load_file

from bl_core.config import config_from_dict
from bl_core.controller import BudgetController
from bl_core.errors import InputError
from bl_core.losses import distillation_loss
from bl_core.packing import PackedDataset, pack_documents
from bl_core.student import build_student, gated_modules
from bl_core.train_state import load_trained_student
from bl_core.training import TrainingError, train

SEQ = 32


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tok = make_tokenizer()
    texts = [
        f"Q:apple\nA:Apple\n\nThe quick brown fox {i} jumps over the lazy dog." * 4
        for i in range(40)
    ]
    out = tmp_path_factory.mktemp("packed") / "train"
    pack_documents(texts, tok, SEQ, out)
    return PackedDataset(out), len(tok)


def _cfg(steps=12, **sections):
    base = {
        "train": {
            "total_tokens": steps * 4 * SEQ,
            "micro_batch_size": 4,
            "learning_rate": 1e-2,
            "log_every": 4,
            "checkpoint_every": 4,
        },
        "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.0},
        "budget": {"final_fraction": 0.0, "ema_beta": 0.5},
    }
    for key, value in sections.items():
        base[key] = base.get(key, {}) | value
    return config_from_dict(base)


def _teacher():
    return make_mistral(seed=1, num_layers=4)


def _eval_loss(model, data, vocab):
    ids = torch.stack([data[i]["input_ids"] for i in range(8)])
    with torch.no_grad():
        return distillation_loss(model(input_ids=ids).logits, None, ids, vocab_size=vocab).ce.item()


@pytest.mark.parametrize("method", ["pretrain", "kd_full", "kd_lora", "budgeted"])
def test_every_method_reduces_the_loss(method, packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    student = build_student(teacher, 2, "mixed")
    before = _eval_loss(student, data, vocab)
    summary = train(
        student,
        teacher,
        method,
        data,
        _cfg(budget={"final_fraction": 0.5}),
        tmp_path,
        vocab_size=vocab,
    )
    after = _eval_loss(load_trained_student(tmp_path / "final"), data, vocab)
    assert after < before, f"{method}: CE {before:.3f} -> {after:.3f}"
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 4 * SEQ


@pytest.mark.parametrize("method", ["kd_lora", "budgeted"])
def test_adapters_train_only_lora_and_gates(method, packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    student = build_student(teacher, 2, "mixed")
    dense_before = {k: v.clone() for k, v in student.state_dict().items()}
    grads = set()

    def hook_all(step):  # after injection (step 1): every parameter that can get a gradient
        if step == 1:
            for name, param in student.named_parameters():
                if param.requires_grad:
                    param.register_post_accumulate_grad_hook(lambda p, n=name: grads.add(n))

    train(student, teacher, method, data, _cfg(), tmp_path, vocab_size=vocab, on_step=hook_all)
    allowed = {"lora_A", "lora_B"} | ({"gate_logits"} if method == "budgeted" else set())
    assert grads and {n.rsplit(".", 1)[-1] for n in grads} == allowed
    after = student.state_dict()
    for key, value in dense_before.items():  # keys of the plain student: all dense
        wrapped = key.replace("_proj.weight", "_proj.base.weight")
        torch.testing.assert_close(after.get(key, after.get(wrapped)), value, rtol=0, atol=0)


def test_budgeted_f0_removes_every_dense_path_on_schedule(packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    student = build_student(teacher, 2, "mixed")
    summary = train(student, teacher, "budgeted", data, _cfg(steps=20), tmp_path, vocab_size=vocab)
    gated = gated_modules(student)
    assert summary["num_removed"] == len(gated) == 14
    assert all(m.retention_value == 0.0 for _, m in gated)
    # the run's alpha trajectory is the controller's schedule, replayed standalone
    shadow = build_student(teacher, 2, "mixed")
    from bl_core.student import inject_gated_lora

    mods = inject_gated_lora(shadow, 4, 8)
    ctrl = BudgetController(mods, 20, 0.0, 0.1, 0.3, ema_beta=0.5, tau_drop=0.05)
    for _ in range(20):
        ctrl.step()
    import json

    trajectory = json.loads((tmp_path / "trajectory.json").read_text())["step_target_actual"]
    assert [tuple(r) for r in trajectory] == ctrl.trajectory


def test_kill_and_resume_equals_uninterrupted(packed, tmp_path):
    data, vocab = packed
    cfg = _cfg(steps=10, lora={"dropout": 0.1}, budget={"final_fraction": 0.3})
    teacher = _teacher()
    train(
        build_student(teacher, 2, "mixed"),
        teacher,
        "budgeted",
        data,
        cfg,
        tmp_path / "a",
        vocab_size=vocab,
    )

    def crash(step):
        if step == 6:  # after the step-4 checkpoint: steps 5-6 are lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            build_student(teacher, 2, "mixed"),
            teacher,
            "budgeted",
            data,
            cfg,
            tmp_path / "b",
            vocab_size=vocab,
            on_step=crash,
        )
    assert not (tmp_path / "b" / "summary.json").exists()
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG
    resumed = train(
        build_student(teacher, 2, "mixed"),
        teacher,
        "budgeted",
        data,
        cfg,
        tmp_path / "b",
        vocab_size=vocab,
    )
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert resumed["tokens"] == 10 * 4 * SEQ


def test_finished_run_is_not_redone(packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    first = train(
        build_student(teacher, 2),
        teacher,
        "kd_lora",
        data,
        _cfg(steps=4),
        tmp_path,
        vocab_size=vocab,
    )
    calls = []
    again = train(
        build_student(teacher, 2),
        teacher,
        "kd_lora",
        data,
        _cfg(steps=4),
        tmp_path,
        vocab_size=vocab,
        on_step=calls.append,
    )
    assert again == first and calls == []


def test_nan_loss_stops_with_step_and_method(packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    student = build_student(teacher, 2, "mixed")
    with torch.no_grad():
        student.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss nan at step 1 of method 'kd_full'"):
        train(student, teacher, "kd_full", data, _cfg(), tmp_path, vocab_size=vocab)


def test_budget_smaller_than_one_step_is_an_error(packed, tmp_path):
    data, vocab = packed
    with pytest.raises(TrainingError, match="token budget 100 is smaller than one optimizer step"):
        train(
            make_mistral(),
            None,
            "pretrain",
            data,
            _cfg(train={"total_tokens": 100}),
            tmp_path,
            vocab_size=vocab,
        )


def test_vocabulary_mismatch_is_an_error(packed, tmp_path):
    data, vocab = packed
    small_teacher = make_mistral(vocab_size=vocab - 10)
    with pytest.raises(InputError, match="vocabulary mismatch: the teacher has 290"):
        train(make_mistral(), small_teacher, "kd_full", data, _cfg(), tmp_path, vocab_size=vocab)


def test_budgeted_that_never_bites_is_an_error(packed, tmp_path):
    data, vocab = packed
    teacher = _teacher()
    # the schedule starts after the last step: retention never moves
    cfg = _cfg(steps=4, budget={"schedule_start": 1.0, "schedule_end": 1.0})
    with pytest.raises(TrainingError, match="controller never acted"):
        train(build_student(teacher, 2), teacher, "budgeted", data, cfg, tmp_path, vocab_size=vocab)
