"""Distillation objective (DESIGN §6, paper eqs. 9-11).

Over the counted (non-padding) positions ``P`` (``n = |P|``):

    L_KD = T^2 * mean_{i in P} KL(softmax(z_t,i / T) || softmax(z_s,i / T))
    L_CE = mean_{i in P} CE(z_s,i, y_i)
    L    = kd_weight * L_KD + (1 - kd_weight) * L_CE

Logits at position ``i`` predict token ``i + 1``: logits, mask and labels are shifted
together. Both sides are cut to the shared vocabulary (models of one family often pad
their embedding matrices differently).

The loss is one fused autograd function: its forward walks the positions in chunks, in
float32, and writes the gradient with respect to the student logits as it goes,

    dL/dz_s,i = (1/n) [ kd_weight * T * (softmax(z_s,i / T) - softmax(z_t,i / T))
                        + (1 - kd_weight) * (softmax(z_s,i) - onehot(y_i)) ],

so backward is a single scaling. Compared with autograd through ``log_softmax`` /
``kl_div`` / ``cross_entropy`` this makes about half the passes over the
``positions x vocab`` tensors, keeps only one of them (the gradient, in the logits'
dtype) alive between forward and backward, and never copies the logits to select the
counted positions: chunks are views, and padded rows are zeroed instead.

Sparse teacher outputs (DESIGN §6a; :class:`~bl_core.teacher_outputs.SparseLogits`): per
position the teacher's ``k`` largest logits ``z_t,K`` and its log-normaliser
``log Z_T = log sum_v exp(z_t,v / T)``. Partition the vocabulary into the ``k`` stored
tokens and one tail bucket; with ``q = exp(z_t,K / T - log Z_T)``, ``q_tail = 1 - sum q``,
``p = softmax(z_s / T)`` and ``p_tail = sum_{v not in K} p_v``:

    KL_K = sum_{j in K} q_j log(q_j / p_j) + q_tail log(q_tail / p_tail)
    dL_KD/dz_s,v = T (p_v - target_v),  target = q on K,  p_v q_tail / p_tail on the tail

(the dense gradient with the teacher's tail mass spread like the student's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bl_core.errors import InputError
from bl_core.teacher_outputs import SparseLogits


@dataclass
class LossParts:
    """``total`` carries the gradient; ``kd`` and ``ce`` are detached, for logging."""

    total: Tensor
    kd: Tensor
    ce: Tensor
    num_positions: Tensor  # () int64; a tensor so that computing it never syncs a GPU


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


def check_vocab(
    student_logits: Tensor, teacher_logits: Tensor | SparseLogits | None, vocab_size: int
) -> None:
    """Both sides must cover the shared tokenizer's ``vocab_size`` entries."""
    if student_logits.shape[-1] < vocab_size:
        raise InputError(
            f"student logits have {student_logits.shape[-1]} entries, fewer than the "
            f"tokenizer's vocabulary of {vocab_size}"
        )
    if isinstance(teacher_logits, Tensor) and teacher_logits.shape[-1] < vocab_size:
        raise InputError(
            f"teacher logits have {teacher_logits.shape[-1]} entries, fewer than the "
            f"tokenizer's vocabulary of {vocab_size}"
        )


def _teacher_terms(
    log_q_s: Tensor, teacher: Tensor | SparseLogits, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(KL rows (N,), target (N, V))``: the KL of the teacher's distribution at
    temperature T from the student's, and the distribution whose difference from the
    student's, ``softmax(z_s / T) - target``, is ``T * dKL/dz_s``.

    Dense: the target is ``softmax(z_t / T)``. Sparse top-k (DESIGN §6a): the KL over the k
    stored tokens and one tail bucket, the student aggregated over the same partition; the
    target is the teacher's probability on the k tokens and, on the tail, the teacher's tail
    mass shared in proportion to the student's own probabilities.
    """
    if not isinstance(teacher, SparseLogits):
        log_q_t = F.log_softmax(teacher.to(log_q_s.dtype) / temperature, dim=-1)
        q_t = log_q_t.exp()
        return log_q_t.sub_(log_q_s).mul_(q_t).sum(-1), q_t
    ids = teacher.token_ids  # (N, k)
    log_qt_top = teacher.values.to(log_q_s.dtype) / temperature - teacher.log_norm[:, None]
    qt_top = log_qt_top.exp()  # (N, k)
    qt_tail = (1.0 - qt_top.sum(-1)).clamp_(min=0.0)  # (N,): the teacher's remaining mass
    log_qs_top = log_q_s.gather(-1, ids)  # (N, k)
    log_qs_tail = torch.logsumexp(log_q_s.scatter(-1, ids, -torch.inf), dim=-1)  # (N,)
    # No tail when every token is stored (k = V): the student's tail is then empty (-inf)
    # and the teacher's is float residue.
    has_tail = (qt_tail > 0) & torch.isfinite(log_qs_tail)
    tail_kl = torch.where(has_tail, qt_tail * (qt_tail.log() - log_qs_tail), 0.0)
    kl_rows = (qt_top * (log_qt_top - log_qs_top)).sum(-1) + tail_kl
    share = torch.where(has_tail, qt_tail * torch.exp(-log_qs_tail), 0.0)  # q_tail / p_tail
    target = log_q_s.exp().mul_(share[:, None]).scatter_(-1, ids, qt_top)
    return kl_rows, target


def _chunk(
    student: Tensor,
    teacher: Tensor | SparseLogits | None,
    targets: Tensor,
    counted: Tensor | None,
    temperature: float,
    kd_weight: float,
    grad_out: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Summed ``T^2 KL`` and summed CE over one chunk of positions; with ``grad_out``
    the chunk's unnormalised gradient is written there. Shapes: student/teacher (N, V)
    (or a sparse teacher's (N, k) rows), targets/counted (N,), grad_out (N, V)."""
    dtype = torch.promote_types(student.dtype, torch.float32)  # float64 stays float64
    z_s = student.to(dtype)  # (N, V); never written in place (may be the logits' view)
    log_p_s = F.log_softmax(z_s, dim=-1)  # (N, V)
    ce_rows = -log_p_s.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    kl_rows = q_t = None
    if teacher is not None:
        log_q_s = F.log_softmax(z_s / temperature, dim=-1)  # student at temperature T
        kl_rows, q_t = _teacher_terms(log_q_s, teacher, temperature)
        kl_rows = kl_rows * temperature**2  # (N,)
    if counted is not None:  # padding: zero rows instead of copying the counted ones
        # (masked_fill, not a product: padded logits may be inf/NaN and must not leak)
        ce_rows = ce_rows.masked_fill(~counted, 0.0)
        kl_rows = None if kl_rows is None else kl_rows.masked_fill(~counted, 0.0)
    kl_sum = ce_rows.new_zeros(()) if kl_rows is None else kl_rows.sum()
    if grad_out is not None:
        if teacher is None or kd_weight < 1.0:  # CE part: softmax(z_s) - onehot(y)
            ce_grad = log_p_s.exp_()
            ce_grad.scatter_add_(-1, targets[:, None], ce_grad.new_full((len(ce_grad), 1), -1.0))
        if teacher is None:
            grad = ce_grad
        else:  # KD part: T (softmax(z_s / T) - target), weighted
            grad = log_q_s.exp_().sub_(q_t).mul_(kd_weight * temperature)
            if kd_weight < 1.0:
                grad.add_(ce_grad, alpha=1.0 - kd_weight)
        if counted is not None:
            grad.masked_fill_(~counted[:, None], 0.0)
        grad_out.copy_(grad)
    return kl_sum, ce_rows.sum()


class _FusedDistillation(torch.autograd.Function):
    """Loss value and its gradient in one chunked pass; backward scales the gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_logits: Tensor,  # (B, T, V*)
        teacher_logits: Tensor | SparseLogits | None,  # (B, T, V**) or sparse (B, T-1, k)
        targets: Tensor,  # (B, T-1), already safe to index (no -100)
        counted: Tensor | None,  # (B, T-1) bool; None = every position counts
        num_positions: Tensor,  # () n, at least 1
        temperature: float,
        kd_weight: float,
        vocab_size: int,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        needs_grad = ctx.needs_input_grad[0]
        batch, seq, full_vocab = student_logits.shape
        grad = None
        if needs_grad:  # every entry not written below (last position, vocab pad) is 0
            exact = full_vocab == vocab_size
            make = torch.empty_like if exact else torch.zeros_like
            grad = make(student_logits)
            if exact:
                grad[:, -1].zero_()
        kl_sum = torch.zeros((), device=student_logits.device, dtype=torch.float32)
        ce_sum = torch.zeros_like(kl_sum)
        with torch.autocast(student_logits.device.type, enabled=False):
            for b in range(batch):
                for start in range(0, seq - 1, chunk_size):
                    rows = slice(start, min(start + chunk_size, seq - 1))
                    if teacher_logits is None or isinstance(teacher_logits, SparseLogits):
                        teacher = None if teacher_logits is None else teacher_logits.rows(b, rows)
                    else:
                        teacher = teacher_logits[b, rows, :vocab_size]
                    kl, ce = _chunk(
                        student_logits[b, rows, :vocab_size],
                        teacher,
                        targets[b, rows],
                        None if counted is None else counted[b, rows],
                        temperature,
                        kd_weight,
                        None if grad is None else grad[b, rows, :vocab_size],
                    )
                    kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
        kd, ce = kl_sum / num_positions, ce_sum / num_positions
        weight = kd_weight if teacher_logits is not None else 0.0
        total = weight * kd + (1.0 - weight) * ce
        ctx.save_for_backward(grad, num_positions)
        ctx.mark_non_differentiable(kd, ce)
        ctx.consumed = False
        return total, kd, ce

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.consumed:  # the gradient buffer was scaled in place the first time
            raise RuntimeError("distillation_loss supports one backward pass per forward")
        ctx.consumed = True
        grad, num_positions = ctx.saved_tensors
        grad = grad.mul_((grad_total / num_positions).to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | SparseLogits | None,
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
    (with a gradient path) when no position is counted. ``chunk_size`` positions (within
    one sequence) are processed at a time, bounding the float32 temporaries to a few
    ``chunk_size x vocab`` tensors. No device sync: ``num_positions`` stays a tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    vocab_size = student_logits.shape[-1] if vocab_size is None else vocab_size
    check_vocab(student_logits, teacher_logits, vocab_size)
    targets, mask = shift_for_next_token(input_ids, attention_mask, labels)
    if attention_mask is None and labels is None:
        # Every position counts (packed data, the trainer's case): no mask to apply.
        counted = None
        num_positions = torch.tensor(targets.numel(), device=targets.device)
    else:
        counted = mask
        num_positions = mask.sum()
        targets = targets.masked_fill(~mask, 0)  # any valid index; its row weighs 0
    total, kd, ce = _FusedDistillation.apply(
        student_logits,
        teacher_logits.detach() if isinstance(teacher_logits, Tensor) else teacher_logits,
        targets,
        counted,
        num_positions.clamp(min=1),
        float(temperature),
        float(kd_weight),
        int(vocab_size),
        int(chunk_size),
    )
    return LossParts(total, kd.detach(), ce.detach(), num_positions)
