"""Deterministic batch order over packed sequences.

Which sequences a micro-batch holds is a pure function of (step, micro-step, rank): a
seeded permutation per epoch, sharded by rank. Resuming needs only the step number, and
N processes together see exactly what one process would.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def batch_indices(
    step: int, micro: int, micro_batch: int, accum: int, seed: int, n: int, rank: int, world: int
) -> list[int]:
    """Sequence indices of one micro-batch: a seeded permutation per epoch, sharded by rank.

    A pure function of (step, micro-step): resuming needs only the step number, and the
    ranks of a multi-process run together see what one process would.
    """
    start = ((step * accum + micro) * world + rank) * micro_batch
    out = []
    for pos in range(start, start + micro_batch):
        epoch, offset = divmod(pos, n)
        out.append(int(_epoch_permutation(seed, epoch, n)[offset]))
    return out
