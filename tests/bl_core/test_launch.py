"""The multi-process path: 2 CPU processes (torchrun + gloo) train like 1 process."""

import json

import pytest
import torch
from conftest import make_mistral, make_tokenizer
from safetensors.torch import load_file

from bl_core.config import config_from_dict
from bl_core.launch import launch
from bl_core.packing import PackedDataset, pack_documents
from bl_core.student import build_student
from bl_core.training import TrainingError, train

pytestmark = pytest.mark.slow
SEQ = 32


def _sections(micro_batch: int, processes: int) -> dict:
    return {
        "train": {
            "total_tokens": 8 * 8 * SEQ,
            "micro_batch_size": micro_batch,
            "learning_rate": 5e-3,
            "log_every": 1,
            "num_processes": processes,
        },
        "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.0},
        "budget": {"final_fraction": 0.3, "ema_beta": 0.5},
    }


def _last_loss(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def test_two_processes_match_one(tmp_path):
    tok = make_tokenizer()
    pack_documents(
        [f"The quick brown fox {i} jumps over the lazy dog. " * 6 for i in range(40)],
        tok,
        SEQ,
        tmp_path / "data",
    )
    teacher = make_mistral(seed=1, num_layers=4)
    teacher.save_pretrained(tmp_path / "teacher")
    build_student(teacher, 2, "mixed").save_pretrained(tmp_path / "student")

    one = train(
        build_student(teacher, 2, "mixed"),
        teacher,
        "budgeted",
        PackedDataset(tmp_path / "data"),
        config_from_dict(_sections(8, 1)),
        tmp_path / "one",
        vocab_size=len(tok),
    )
    spec = {
        "method": "budgeted",
        "sections": _sections(4, 2),
        "run_dir": str(tmp_path / "two"),
        "student_dir": str(tmp_path / "student"),
        "teacher_dir": str(tmp_path / "teacher"),
        "train_dir": str(tmp_path / "data"),
        "vocab_size": len(tok),
    }
    two = launch(spec, 2, timeout_s=600)

    assert two["steps"] == one["steps"] == 8 and two["tokens"] == one["tokens"]
    # same global batch each step: the loss curves agree up to float reduction order
    torch.testing.assert_close(
        torch.tensor(_last_loss(tmp_path / "two")),
        torch.tensor(_last_loss(tmp_path / "one")),
        rtol=1e-4,
        atol=1e-4,
    )
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    assert two["realised_fraction"] == pytest.approx(one["realised_fraction"])


def test_failed_launch_reports_the_error(tmp_path):
    spec = {
        "method": "kd_full",
        "sections": _sections(4, 2),
        "run_dir": str(tmp_path / "run"),
        "student_dir": str(tmp_path / "missing"),
        "teacher_dir": None,
        "train_dir": str(tmp_path / "missing-data"),
        "vocab_size": 300,
    }
    with pytest.raises(TrainingError, match="2-process training of 'kd_full'.*failed"):
        launch(spec, 2, timeout_s=300)
