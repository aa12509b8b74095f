"""Damaged files are named in one line, and a damaged latest checkpoint falls back to the
newest good one; a stop request checkpoints and resumes exactly (issue 17)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_checkpoint, make_mistral, make_tokenizer
from safetensors.torch import load_file

from bl_core import interrupt
from bl_core.checkpoint import load_causal_lm
from bl_core.config import config_from_dict
from bl_core.errors import InputError
from bl_core.integrity import safetensors_problem
from bl_core.interrupt import Interrupted
from bl_core.packing import PackedDataset, pack_documents
from bl_core.student import build_student, load_pretrained
from bl_core.training import train

SEQ = 32


def _truncate(path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint("llama", tmp_path_factory.mktemp("good") / "model")


@pytest.mark.parametrize("keep", [0.0, 0.002, 0.5, 0.999])
def test_truncated_weights_are_named_with_what_is_wrong(model_dir, tmp_path, keep):
    damaged = shutil.copytree(model_dir, tmp_path / "teacher")
    weights = damaged / "model.safetensors"
    _truncate(weights, keep)
    assert safetensors_problem(weights) is not None
    for load in (load_pretrained, load_causal_lm):  # a teacher; bl eval's model
        with pytest.raises(InputError) as err:
            load(damaged)
        message = str(err.value)
        assert str(weights) in message and "damaged" in message and "\n" not in message


def test_intact_weights_pass(model_dir):
    assert safetensors_problem(model_dir / "model.safetensors") is None


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tok = make_tokenizer()
    texts = [f"The quick brown fox {i} jumps over the lazy dog." * 4 for i in range(40)]
    out = tmp_path_factory.mktemp("packed") / "train"
    pack_documents(texts, tok, SEQ, out)
    return PackedDataset(out), len(tok)


CFG = config_from_dict(
    {
        "train": {
            "total_tokens": 10 * 4 * SEQ,
            "micro_batch_size": 4,
            "learning_rate": 1e-2,
            "log_every": 1,
            "checkpoint_every": 2,
        },
        "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.0},
        "budget": {"final_fraction": 0.0, "ema_beta": 0.5},
    }
)


def _train(packed, run_dir, on_step=None):
    data, vocab = packed
    teacher = make_mistral(seed=1, num_layers=4)
    student = build_student(teacher, 2, "mixed")
    return train(
        student, teacher, "budgeted", data, CFG, run_dir, vocab_size=vocab, on_step=on_step
    )


@pytest.fixture(scope="module")
def uninterrupted(packed, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("a")
    _train(packed, run_dir)
    return load_file(run_dir / "final" / "model.safetensors")


def _assert_same(run_dir, reference):
    final = load_file(run_dir / "final" / "model.safetensors")
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=0, atol=0)


def test_damaged_latest_checkpoint_falls_back_to_the_previous(
    packed, uninterrupted, tmp_path, capsys
):
    def crash(step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(packed, tmp_path, crash)
    latest = tmp_path / "checkpoints" / "step-00000006"
    _truncate(latest / "model.safetensors")
    capsys.readouterr()
    _train(packed, tmp_path)
    out = capsys.readouterr().out
    assert f"skipping a damaged checkpoint: weights file '{latest / 'model.safetensors'}'" in out
    assert "(step 4)" in out
    _assert_same(tmp_path, uninterrupted)


def test_stop_request_checkpoints_at_the_step_and_resumes_exactly(packed, uninterrupted, tmp_path):
    def stop(step):
        if step == 5:
            interrupt.request_stop()

    try:
        with pytest.raises(Interrupted, match="at step 5, checkpointed"):
            _train(packed, tmp_path, stop)
    finally:
        interrupt.reset()
    assert (tmp_path / "checkpoints" / "step-00000005").is_dir()
    _train(packed, tmp_path)
    _assert_same(tmp_path, uninterrupted)
    steps = [
        json.loads(x).get("step") for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [s for s in steps if s is not None]
    assert steps == list(range(1, 11))  # each step once, though 5 was logged before the stop
