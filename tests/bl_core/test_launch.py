"""The multi-process path: the micro preset's distillation in 2 CPU processes (torchrun +
gloo) trains like 1 process."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bl_core.config import apply_overrides
from bl_core.data import prepare_data
from bl_core.ladder import prepare_teacher, warm_started_student
from bl_core.launch import launch
from bl_core.packing import PackedDataset
from bl_core.preset_files import resolve_config
from bl_core.student import load_pretrained
from bl_core.teacher_outputs import StoredTeacher, sequences_read, write_teacher_store
from bl_core.training import TrainingError, train

pytestmark = pytest.mark.slow


def _losses(run_dir):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro preset's data, first teacher and warm-started student."""
    root = tmp_path_factory.mktemp("micro")
    cfg, _ = resolve_config("micro")
    cfg = apply_overrides(cfg, {"budget.final_fraction": 0.4, "train.log_every": 1})
    data = prepare_data(cfg, root / "data")
    teacher = prepare_teacher(cfg.teachers[0], cfg, data, root / "teacher")
    student_dir = root / "student"
    warm_started_student(teacher, cfg).save_pretrained(student_dir)
    return cfg, data, teacher, student_dir


def _two_process_cfg(cfg):
    """Two processes, half the micro-batch each: the same global batch every step."""
    half = cfg.train.micro_batch_size // 2
    return apply_overrides(cfg, {"train.num_processes": 2, "train.micro_batch_size": half})


def test_micro_distillation_in_two_processes_matches_one(micro, tmp_path):
    cfg, data, teacher, student_dir = micro
    one = train(
        load_pretrained(student_dir),
        load_pretrained(teacher["model_dir"]),
        "budgeted",
        PackedDataset(data.train_dir),
        cfg,
        tmp_path / "one",
        vocab_size=data.vocab_size,
    )
    two_cfg = _two_process_cfg(cfg)
    spec = {
        "method": "budgeted",
        "sections": two_cfg.model_dump(mode="json"),
        "run_dir": str(tmp_path / "two"),
        "student_dir": str(student_dir),
        "teacher_dir": teacher["model_dir"],
        "train_dir": data.train_dir,
        "vocab_size": data.vocab_size,
    }
    two = launch(spec, 2, timeout_s=600)

    assert two["steps"] == one["steps"] and two["tokens"] == one["tokens"]
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "two")),
        torch.tensor(_losses(tmp_path / "one")),
        rtol=1e-4,
        atol=1e-4,
    )
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    assert two["realised_fraction"] == pytest.approx(one["realised_fraction"])


def test_two_processes_read_their_shards_of_a_teacher_store(micro, tmp_path):
    """Sparse shared teacher outputs (DESIGN §6a) under torchrun: each rank reads only the
    rows of its own shard from the memory-mapped store, and training matches one process."""
    cfg, data, teacher, student_dir = micro
    cfg = apply_overrides(cfg, {"kd.teacher_top_k": 16})
    packed = PackedDataset(data.train_dir)
    steps = cfg.train.total_tokens // (cfg.train.micro_batch_size * packed.meta["seq_len"])
    reads = [
        {"seed": 0, "steps": steps, "micro_batch_size": cfg.train.micro_batch_size}
        | {"grad_accum_steps": 1, "world_size": 1}
    ]
    store = tmp_path / "store"
    write_teacher_store(
        load_pretrained(teacher["model_dir"]),
        packed,
        sequences_read(reads, len(packed)),
        store,
        top_k=16,
        temperature=cfg.kd.temperature,
        vocab_size=data.vocab_size,
    )
    one = train(
        load_pretrained(student_dir),
        None,
        "budgeted",
        packed,
        cfg,
        tmp_path / "one",
        vocab_size=data.vocab_size,
        outputs=StoredTeacher(store, cfg.kd.temperature, data.vocab_size),
    )
    spec = {
        "method": "budgeted",
        "sections": _two_process_cfg(cfg).model_dump(mode="json"),
        "run_dir": str(tmp_path / "two"),
        "student_dir": str(student_dir),
        "teacher_dir": None,
        "teacher_store": str(store),
        "train_dir": data.train_dir,
        "vocab_size": data.vocab_size,
    }
    two = launch(spec, 2, timeout_s=600)
    assert two["steps"] == one["steps"]
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "two")),
        torch.tensor(_losses(tmp_path / "one")),
        rtol=1e-4,
        atol=1e-4,
    )


def test_failed_launch_reports_the_error(tmp_path):
    cfg, _ = resolve_config("micro")
    spec = {
        "method": "kd_full",
        "sections": cfg.model_dump(mode="json"),
        "run_dir": str(tmp_path / "run"),
        "student_dir": str(tmp_path / "missing"),
        "teacher_dir": None,
        "train_dir": str(tmp_path / "missing-data"),
        "vocab_size": 512,
    }
    with pytest.raises(TrainingError, match="2-process training of 'kd_full'.*failed"):
        launch(spec, 2, timeout_s=300)
