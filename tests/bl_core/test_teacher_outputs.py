"""The teacher's top-k store (DESIGN §6a, sparse form): what it holds, which sequences it
covers, what it refuses, and a killed run resuming against it to the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import make_mistral, make_tokenizer
from safetensors.torch import load_file

from bl_core.config import config_from_dict
from bl_core.errors import InputError
from bl_core.packing import PackedDataset, pack_documents
from bl_core.sampling import batch_indices
from bl_core.student import build_student
from bl_core.teacher_outputs import (
    SharedTeacher,
    StoredTeacher,
    sequences_read,
    store_bytes_per_position,
    write_teacher_store,
)
from bl_core.training import train

SEQ, VOCAB, K, T = 32, 300, 8, 3.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    texts = [
        f"The quick brown fox {i} jumps over the lazy dog. Q:apple\nA:Apple" for i in range(60)
    ]
    out = tmp_path_factory.mktemp("packed") / "train"
    pack_documents(texts, make_tokenizer(), SEQ, out)
    return PackedDataset(out)


@pytest.fixture(scope="module")
def teacher():
    return make_mistral(seed=1, num_layers=2)


def _cfg(steps: int = 6, **train):
    return config_from_dict(
        {
            "train": {
                "total_tokens": steps * 4 * SEQ,
                "micro_batch_size": 4,
                "learning_rate": 1e-2,
                "checkpoint_every": 2,
                **train,
            },
            "kd": {"teacher_top_k": K, "temperature": T},
            "lora": {"rank": 4, "lora_alpha": 8, "dropout": 0.1},
            "budget": {"final_fraction": 0.0, "ema_beta": 0.5},
        }
    )


READS = [{"seed": 0, "steps": 6, "micro_batch_size": 4, "grad_accum_steps": 1, "world_size": 1}]


@pytest.fixture(scope="module")
def store(teacher, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "topk"
    sequences = sequences_read(READS, len(data))
    meta = write_teacher_store(
        teacher, data, sequences, out, top_k=K, temperature=T, vocab_size=VOCAB, batch_size=3
    )
    return out, sequences, meta


def test_sequences_read_are_exactly_what_training_reads(data):
    n = len(data)
    expected = {i for step in range(6) for i in batch_indices(step, 0, 4, 1, 0, n, 0, 1)}
    assert set(sequences_read(READS, n)) == expected
    two_ranks = [READS[0] | {"micro_batch_size": 2, "world_size": 2}]
    assert sequences_read(two_ranks, n) == sorted(expected)  # same global batches
    assert sequences_read([READS[0] | {"steps": n}], n) == list(range(n))  # a whole epoch


def test_the_store_holds_the_teachers_top_k_per_position(teacher, data, store):
    out, sequences, meta = store
    assert meta["num_rows"] == len(sequences)
    assert meta["bytes_per_position"] == store_bytes_per_position(K, VOCAB) == K * (4 + 2) + 4
    reader = StoredTeacher(out, T, VOCAB)
    pick = sequences[:3]
    ids = torch.stack([data[i]["input_ids"] for i in pick])
    batch = reader.for_batch(pick, ids)
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits[:, :-1, :VOCAB]
    top = logits.topk(K, dim=-1)
    torch.testing.assert_close(batch.values, top.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.token_ids, top.indices)
    torch.testing.assert_close(batch.log_norm, torch.logsumexp(logits / T, -1))


def test_the_store_refuses_what_it_cannot_answer(data, store, tmp_path):
    out, sequences, _ = store
    reader = StoredTeacher(out, T, VOCAB)
    missing = next(i for i in range(len(data)) if i not in set(sequences))
    with pytest.raises(InputError, match=f"no outputs for packed sequence {missing}"):
        reader.for_batch([missing], data[missing]["input_ids"][None])
    with pytest.raises(InputError, match="temperature"):
        StoredTeacher(out, 2.0, VOCAB)  # a new T is a new store
    half = tmp_path / "half"
    half.mkdir()
    (half / "sequences.npy").write_bytes(b"")  # no meta.json: never finished
    with pytest.raises(InputError, match="unreadable"):
        StoredTeacher(half, T, VOCAB)


def test_a_killed_run_resumes_against_the_store_to_the_same_weights(teacher, data, store, tmp_path):
    out, *_ = store

    def run(run_dir, on_step=None):
        return train(
            build_student(teacher, 1, "first"),
            None,
            "budgeted",
            data,
            _cfg(),
            run_dir,
            vocab_size=VOCAB,
            on_step=on_step,
            outputs=StoredTeacher(out, T, VOCAB),
        )

    def kill(step):
        if step == 3:
            raise KeyboardInterrupt

    run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill)
    run(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shared_teacher_computes_each_distinct_batch_once(teacher, data):
    shared = SharedTeacher(teacher, capacity=2)
    batches = [[0, 1], [2, 3], [0, 1], [2, 3], [4, 5], [0, 1]]
    outs = [shared.for_batch(b, torch.stack([data[i]["input_ids"] for i in b])) for b in batches]
    assert outs[0] is outs[2] and outs[1] is outs[3]  # the very same tensor: exact
    assert shared.num_forwards == 4 and shared.num_requests == 6  # [0, 1] was evicted
