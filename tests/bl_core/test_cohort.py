"""A lockstep cohort (DESIGN §6a, exact shared teacher outputs) trains every cell to exactly
the weights and loss curve of its solo run, with one teacher forward per distinct batch; a
failing cell does not stop the others; a killed cohort resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_mistral, make_tokenizer
from safetensors.torch import load_file

from bl_core.cohort import CohortMember, train_cohort
from bl_core.config import config_from_dict
from bl_core.packing import PackedDataset, pack_documents
from bl_core.student import build_student
from bl_core.training import train

SEQ = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    texts = [
        f"Q:apple\nA:Apple\n\nThe quick brown fox {i} jumps over the dog." * 3 for i in range(40)
    ]
    out = tmp_path_factory.mktemp("packed") / "train"
    pack_documents(texts, make_tokenizer(), SEQ, out)
    return PackedDataset(out)


@pytest.fixture(scope="module")
def teacher():
    return make_mistral(seed=1, num_layers=4)


# label -> (method, final fraction, seed, optimizer steps)
CELLS = {
    "kd_full": ("kd_full", None, 0, 8),
    "kd_lora": ("kd_lora", None, 0, 8),
    "budgeted-F0.0": ("budgeted", 0.0, 0, 8),
    "budgeted-F0.4": ("budgeted", 0.4, 0, 8),
    "budgeted-F0.4-short": ("budgeted", 0.4, 0, 5),
    "budgeted-F0.4-seed1": ("budgeted", 0.4, 1, 8),
}


def _cfg(fraction, seed, steps):
    return config_from_dict(
        {
            "train": {
                "total_tokens": steps * 2 * 4 * SEQ,  # 2 micro-batches of 4 per step
                "micro_batch_size": 4,
                "grad_accum_steps": 2,
                "learning_rate": 1e-2,
                "log_every": 2,
                "checkpoint_every": 3,
                "seed": seed,
            },
            "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.1},  # dropout: RNG streams matter
            "budget": {"final_fraction": 0.4 if fraction is None else fraction, "ema_beta": 0.5},
        }
    )


def _members(teacher, root: Path, labels=CELLS) -> list[CohortMember]:
    return [
        CohortMember(
            label,
            build_student(teacher, 2, "mixed"),
            CELLS[label][0],
            _cfg(*CELLS[label][1:]),
            root / label,
        )
        for label in labels
    ]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.fixture(scope="module")
def solo(teacher, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("solo")
    for member in _members(teacher, root):
        train(
            member.student, teacher, member.method, data, member.cfg, member.run_dir, vocab_size=300
        )
    return root


def test_every_cell_is_bit_identical_to_its_solo_run(teacher, data, solo, tmp_path):
    results, counts = train_cohort(_members(teacher, tmp_path), teacher, data, vocab_size=300)
    assert all(isinstance(r, dict) for r in results.values()), results
    for label in CELLS:
        a, b = _weights(solo / label), _weights(tmp_path / label)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), label
        assert _losses(solo / label) == _losses(tmp_path / label)
    # one forward per distinct batch: 8 steps x 2 micro-batches for each seed
    assert counts == {"forwards": 2 * (8 * 2), "requests": sum(2 * s for *_, s in CELLS.values())}


def test_a_failing_cell_leaves_the_others_finished(teacher, data, solo, tmp_path):
    def fail_one(label: str, step: int) -> None:
        if label == "kd_lora" and step == 2:
            raise RuntimeError("injected")

    results, _ = train_cohort(
        _members(teacher, tmp_path), teacher, data, vocab_size=300, on_step=fail_one
    )
    assert isinstance(results["kd_lora"], RuntimeError)
    assert not (tmp_path / "kd_lora" / "summary.json").exists()
    for label in set(CELLS) - {"kd_lora"}:
        a, b = _weights(solo / label), _weights(tmp_path / label)
        assert all(torch.equal(a[k], b[k]) for k in a), label


def test_a_killed_cohort_resumes_to_the_same_weights(teacher, data, solo, tmp_path):
    labels = ["kd_lora", "budgeted-F0.4", "budgeted-F0.4-seed1"]

    def kill(label: str, step: int) -> None:
        if step == 5:  # after the step-3 checkpoint: steps 4-5 are lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cohort(
            _members(teacher, tmp_path, labels), teacher, data, vocab_size=300, on_step=kill
        )
    torch.manual_seed(123)  # the resumed cohort must not depend on the process's RNG
    results, _ = train_cohort(_members(teacher, tmp_path, labels), teacher, data, vocab_size=300)
    assert all(isinstance(r, dict) for r in results.values()), results
    for label in labels:
        a, b = _weights(solo / label), _weights(tmp_path / label)
        assert all(torch.equal(a[k], b[k]) for k in a), label
    again, counts = train_cohort(_members(teacher, tmp_path, labels), teacher, data, vocab_size=300)
    assert counts["requests"] == 0 and all(isinstance(r, dict) for r in again.values())
