"""Teacher pretraining curriculum: short copy snippets mixed into the token stream
(DESIGN §1a; the Bi-Induct teachers of the paper).

A snippet is a span ``S`` of ``L`` tokens taken from the training stream itself, a
dedicated separator, and ``S`` again (``induction``), reversed (``anti``), or either with
probability 1/2 (``balanced``)::

    ... natural tokens ... | s1 s2 ... sL  SEP  s1 s2 ... sL | ... natural tokens ...
                             (induction)        (anti: sL ... s2 s1)

The mix ratio ``m(p) = m0 (1 - p)`` (``p``: pretraining progress) is the expected fraction
of training tokens that belong to snippets: it starts at ``m0`` and falls linearly to 0.
Snippets overwrite natural tokens of a packed row at random, non-overlapping places; ``S``
is another span of the same row, so snippets never bring in text the stream does not have
(in particular never the ICL probes' held-out word list). Everything is a function of
``(seed, step, micro-step, row)``: resuming reproduces the same batches.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from torch import Tensor

Curriculum = Literal["natural", "induction", "anti", "balanced"]
CURRICULA: tuple[str, ...] = ("natural", "induction", "anti", "balanced")


def mix_ratio(progress: float, initial_mix: float) -> float:
    """``m(p)``: the expected share of snippet tokens at pretraining progress ``p``."""
    return initial_mix * max(0.0, 1.0 - progress)


def snippet(span: list[int], sep_id: int, variant: str, rng: random.Random) -> list[int]:
    """``[S, SEP, S]`` (induction) or ``[S, SEP, reverse(S)]`` (anti); ``balanced`` picks
    one of the two with probability 1/2."""
    if variant == "balanced":
        variant = "induction" if rng.random() < 0.5 else "anti"
    if variant == "induction":
        return [*span, sep_id, *span]
    if variant == "anti":
        return [*span, sep_id, *reversed(span)]
    raise ValueError(f"variant={variant!r}: expected induction, anti or balanced")


def insert_snippets(
    row: list[int],
    variant: str,
    span_length: int,
    mix: float,
    sep_id: int,
    rng: random.Random,
) -> tuple[list[int], list[tuple[int, int]]]:
    """``row`` with copy snippets written over it so that, in expectation, a share ``mix``
    of its tokens belong to snippets. Returns the new row and each snippet's
    ``(start, source)``: it occupies ``row[start : start + 2L + 1]`` and its span ``S`` is
    ``row[source : source + L]`` of the original row."""
    size = 2 * span_length + 1
    length = len(row)
    if variant == "natural" or mix <= 0.0 or length < size + span_length:
        return list(row), []
    expected = mix * length / size  # snippets per row, in expectation
    count = int(expected) + (rng.random() < expected - int(expected))
    count = min(count, length // size)
    # non-overlapping places: choose the free tokens left over, then lay snippets in order
    free = length - count * size
    cuts = sorted(rng.randint(0, free) for _ in range(count))
    out, placed = list(row), []
    for k, cut in enumerate(cuts):
        start = cut + k * size
        source = rng.randint(0, length - span_length)
        out[start : start + size] = snippet(
            row[source : source + span_length], sep_id, variant, rng
        )
        placed.append((start, source))
    return out, placed


def apply_curriculum(
    ids: Tensor,
    variant: str,
    span_length: int,
    mix: float,
    sep_id: int,
    seed: tuple[int, ...],
) -> Tensor:
    """A micro-batch ``ids`` (B, T) with snippets in every row; ``seed`` (e.g. the run's
    seed, step, micro-step and rank) makes it reproducible."""
    if variant == "natural" or mix <= 0.0:
        return ids
    rows = []
    for r, row in enumerate(ids.tolist()):
        rng = random.Random(f"bl-curriculum:{':'.join(map(str, seed))}:{r}")
        rows.append(insert_snippets(row, variant, span_length, mix, sep_id, rng)[0])
    return torch.tensor(rows, dtype=ids.dtype, device=ids.device)
