"""Perplexity equals exp(token-weighted mean NLL) computed by hand (DESIGN §8)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_mistral

from bl_core.errors import InputError
from bl_core.perplexity import perplexity


def _hand_nll_per_sequence(model: torch.nn.Module, sequences: np.ndarray) -> list[float]:
    """Sum of -log p(x_t | x_<t) for t >= 1, one sequence at a time, by log-softmax + gather."""
    sums = []
    with torch.no_grad():
        for row in sequences:
            ids = torch.tensor(row, dtype=torch.long)[None]
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            sums.append(-log_probs.gather(1, ids[0, 1:, None]).sum().item())
    return sums


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_mistral(num_layers=2)


@pytest.fixture(scope="module")
def sequences() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 300, size=(5, 9)).astype(np.uint16)


def test_matches_the_hand_computation_with_a_short_last_batch(model, sequences) -> None:
    sums = _hand_nll_per_sequence(model, sequences)
    tokens_per_sequence = sequences.shape[1] - 1
    mean_nll = sum(sums) / (len(sums) * tokens_per_sequence)

    result = perplexity(model, sequences, batch_size=2, device="cpu")  # batches of 2, 2, 1

    assert result["num_tokens"] == 5 * 8 and result["num_sequences"] == 5
    assert result["seq_len"] == 9
    assert result["mean_nll"] == pytest.approx(mean_nll, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-6)
    # The weighting matters here: averaging the three batch means gives another number.
    batch_means = [sum(sums[i : i + 2]) / (len(sums[i : i + 2]) * 8) for i in (0, 2, 4)]
    assert abs(sum(batch_means) / 3 - mean_nll) > 1e-4


def test_batch_size_does_not_change_the_result(model, sequences) -> None:
    one = perplexity(model, sequences, batch_size=1)
    three = perplexity(model, sequences, batch_size=3)
    assert three["mean_nll"] == pytest.approx(one["mean_nll"], rel=1e-6)


def test_reads_a_read_only_memmap_and_a_tensor(model, sequences, tmp_path: Path) -> None:
    path = tmp_path / "tokens.bin"
    sequences.tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r", shape=sequences.shape)
    expected = perplexity(model, sequences)["mean_nll"]
    assert perplexity(model, memmap)["mean_nll"] == pytest.approx(expected, rel=1e-6)
    tensor = torch.from_numpy(sequences.astype(np.int64))
    assert perplexity(model, tensor)["mean_nll"] == pytest.approx(expected, rel=1e-6)


def test_max_tokens_keeps_the_first_sequences(model, sequences) -> None:
    capped = perplexity(model, sequences, max_tokens=20)  # 20 // 9 = 2 sequences
    assert capped["num_sequences"] == 2 and capped["num_tokens"] == 16
    sums = _hand_nll_per_sequence(model, sequences[:2])
    assert capped["mean_nll"] == pytest.approx(sum(sums) / 16, rel=1e-6)


def test_restores_the_training_flag(sequences) -> None:
    model = make_mistral(num_layers=1).train()
    perplexity(model, sequences[:1])
    assert model.training


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(10, dtype=np.uint16), "shape"),
        (np.zeros((3, 1), dtype=np.uint16), "seq_len >= 2"),
        (np.zeros((3, 4), dtype=np.float32), "integer token ids"),
        (np.full((2, 4), 300, dtype=np.uint16), "vocabulary size 300"),
    ],
)
def test_bad_sequences_raise_input_errors(model, bad: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        perplexity(model, bad)
