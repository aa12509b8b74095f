"""Distillation objective (DESIGN §6, paper eqs. 9-11).

Over the counted (non-padding) positions ``P``:

    L_KD = T^2 * mean_{i in P} KL(softmax(z_t,i / T) || softmax(z_s,i / T))
    L_CE = mean_{i in P} CE(z_s,i, y_i)
    L    = kd_weight * L_KD + (1 - kd_weight) * L_CE

Logits at position ``i`` predict token ``i + 1``: logits, mask and labels are shifted
together. Both sides are cut to the shared vocabulary (models of one family often pad
their embedding matrices differently). The loss is computed in float32 over chunks of
positions, with activation checkpointing per chunk when gradients are needed, so the
``positions x vocab`` float32 intermediates never all live at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from bl_core.errors import InputError


@dataclass
class LossParts:
    """``total`` carries the gradient; ``kd`` and ``ce`` are detached, for logging."""

    total: Tensor
    kd: Tensor
    ce: Tensor
    num_positions: int


def shift_for_next_token(
    input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Targets and the counted-position mask for logits[:, :-1]. Both (B, T-1).

    A position counts when both the input token and its target are real tokens and the
    label is not ``-100``.
    """
    targets = (input_ids if labels is None else labels)[:, 1:]
    mask = targets != -100
    if attention_mask is not None:
        mask = mask & attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return targets, mask


def check_vocab(student_logits: Tensor, teacher_logits: Tensor | None, vocab_size: int) -> None:
    """Both sides must cover the shared tokenizer's ``vocab_size`` entries."""
    if student_logits.shape[-1] < vocab_size:
        raise InputError(
            f"student logits have {student_logits.shape[-1]} entries, fewer than the "
            f"tokenizer's vocabulary of {vocab_size}"
        )
    if teacher_logits is not None and teacher_logits.shape[-1] < vocab_size:
        raise InputError(
            f"teacher logits have {teacher_logits.shape[-1]} entries, fewer than the "
            f"tokenizer's vocabulary of {vocab_size}"
        )


def _chunk_sums(
    student: Tensor, teacher: Tensor | None, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Summed KL (times T^2) and summed CE over one chunk of positions, in float32."""
    s = student.float()  # (N, V)
    ce = F.cross_entropy(s, targets, reduction="sum")
    if teacher is None:
        return s.new_zeros(()), ce
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum")
    return kl * temperature**2, ce


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    temperature: float = 3.0,
    kd_weight: float = 0.8,
    vocab_size: int | None = None,
    labels: Tensor | None = None,
    chunk_size: int = 4096,
) -> LossParts:
    """``kd_weight * L_KD + (1 - kd_weight) * L_CE``; ``teacher_logits=None`` gives pure CE.

    Shapes: logits (B, T, V*), input_ids/attention_mask/labels (B, T). Returns zeros
    (with a gradient path) when no position is counted.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    vocab_size = student_logits.shape[-1] if vocab_size is None else vocab_size
    check_vocab(student_logits, teacher_logits, vocab_size)
    targets, mask = shift_for_next_token(input_ids, attention_mask, labels)
    s = student_logits[:, :-1, :vocab_size][mask]  # (N, V)
    t = None if teacher_logits is None else teacher_logits[:, :-1, :vocab_size][mask].detach()
    y = targets[mask]
    n = int(y.numel())
    if n == 0:
        zero = student_logits.sum() * 0.0
        return LossParts(zero, zero.detach(), zero.detach(), 0)
    kl_sum = s.new_zeros((), dtype=torch.float32)
    ce_sum = s.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (s[sl], None if t is None else t[sl], y[sl], temperature)
        if s.requires_grad:
            kl, ce = checkpoint(_chunk_sums, *args, use_reentrant=False)
        else:
            kl, ce = _chunk_sums(*args)
        kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
    kd, ce = kl_sum / n, ce_sum / n
    weight = kd_weight if teacher_logits is not None else 0.0
    total = weight * kd + (1.0 - weight) * ce
    return LossParts(total, kd.detach(), ce.detach(), n)
