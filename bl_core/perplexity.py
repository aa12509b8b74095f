"""Validation perplexity: ``exp(token-weighted mean NLL)`` (DESIGN §8).

Input is the packed validation set, an integer array ``(num_sequences, seq_len)`` as
:func:`bl_core.packing.load_packed` returns it (a read-only ``np.memmap``), or a tensor.
Every position after the first is scored, so each sequence contributes ``seq_len - 1``
tokens; NLLs are summed over all tokens before dividing, so a short last batch weighs
exactly as much as its tokens (not as much as a full batch).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bl_core.errors import ConfigError, InputError


def _as_sequences(sequences: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    shape = tuple(sequences.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 2:
        raise InputError(
            "validation sequences must be a (num_sequences >= 1, seq_len >= 2) array, "
            f"got shape {shape}"
        )
    is_int = (
        not sequences.dtype.is_floating_point and sequences.dtype != torch.bool
        if isinstance(sequences, torch.Tensor)
        else np.issubdtype(sequences.dtype, np.integer)
    )
    if not is_int:
        raise InputError(f"validation sequences must hold integer token ids, got {sequences.dtype}")
    return sequences


def _batch_tensor(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    # Copy the slice to int64: memmaps are read-only and uint16/uint32 are not index types.
    if isinstance(rows, torch.Tensor):
        return rows.to(device=device, dtype=torch.long)
    return torch.from_numpy(np.array(rows, dtype=np.int64)).to(device)


def _vocab_size(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    return getattr(embeddings, "num_embeddings", None)


def _batch_nll_sum(model: nn.Module, ids: torch.Tensor) -> float:
    """Sum of next-token NLLs over a (B, T) batch, in float32 whatever the model dtype."""
    out = model(input_ids=ids, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
    # One row at a time: a float32 copy of a whole (B, T, V) batch can be GBs at 50k vocab.
    return sum(
        F.cross_entropy(logits[i, :-1].float(), ids[i, 1:], reduction="sum").item()
        for i in range(ids.shape[0])
    )


@torch.no_grad()
def perplexity(
    model: nn.Module,
    sequences: np.ndarray | torch.Tensor,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_tokens: int | None = None,
    progress_label: str | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model`` on packed ``sequences``.

    ``max_tokens`` keeps the first ``max(1, max_tokens // seq_len)`` sequences (a quick
    check). ``progress_label`` names the terminal progress bar (default "perplexity").
    ``device`` defaults to the model's; the model is put in eval mode and its
    training flag restored afterwards. Returns ``perplexity``, ``mean_nll`` (nats per
    token), ``num_tokens`` (scored tokens), ``num_sequences`` and ``seq_len``.
    """
    if batch_size < 1:
        raise ConfigError(f"perplexity.batch_size={batch_size}: must be >= 1")
    sequences = _as_sequences(sequences)
    num_sequences, seq_len = int(sequences.shape[0]), int(sequences.shape[1])
    if max_tokens is not None:
        num_sequences = min(num_sequences, max(1, max_tokens // seq_len))
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    vocab_size = _vocab_size(model)
    was_training = model.training
    model.eval()
    nll_sum, num_tokens = 0.0, 0
    starts = range(0, num_sequences, batch_size)
    try:
        bar = tqdm(starts, desc=progress_label or "perplexity", unit="batch",
                   disable=not sys.stderr.isatty())  # fmt: skip
        for start in bar:
            ids = _batch_tensor(sequences[start : min(start + batch_size, num_sequences)], device)
            if vocab_size is not None and int(ids.max()) >= vocab_size:
                raise InputError(
                    f"token id {int(ids.max())} >= model vocabulary size {vocab_size}: was the "
                    "validation set tokenised with another tokenizer?"
                )
            nll_sum += _batch_nll_sum(model, ids)
            num_tokens += ids.shape[0] * (seq_len - 1)
    finally:
        model.train(was_training)
    mean_nll = nll_sum / num_tokens
    return {
        # exp overflows a float above ~709 nats; report inf rather than crash.
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,
        "mean_nll": mean_nll,
        "num_tokens": num_tokens,
        "num_sequences": num_sequences,
        "seq_len": seq_len,
    }
