"""Gated LoRA linear module (DESIGN §3, paper eq. 1) and the low-rank operator
that compression deploys (DESIGN §5).

    y = retention * (W0 x + b)  +  scale * B diag(sigmoid(gate_logits)) A dropout(x)

    x ──┬── W0 (frozen) ── × retention ──┐      retention = alpha, written by the
        │                                 (+)── y    controller only; at 0 the dense
        └── dropout ── A ── ⊙ g·s ── B ──┘          matmul is skipped, not zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The deployed low-rank operator is defined once, in the standalone modeling code that every
# exported student ships (transformers-only imports), and used from there by the project.
from bl_core.hf.modeling_budgeted_lora import LowRankLinear  # noqa: F401


def _zeroed_copy(x: Tensor, positions: Tensor) -> Tensor:
    """A contiguous copy of ``x`` with the elements at flat ``positions`` set to 0."""
    out = x.clone(memory_format=torch.contiguous_format)
    out.view(-1).index_fill_(0, positions, 0.0)
    return out


class _ZeroAt(torch.autograd.Function):
    """``x`` with the elements at flat ``positions`` (of its contiguous layout) set to 0."""

    @staticmethod
    def forward(ctx, x: Tensor, positions: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(positions)
        return _zeroed_copy(x, positions)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (positions,) = ctx.saved_tensors
        return _zeroed_copy(grad, positions), None


class _MaskedDown(torch.autograd.Function):
    """``h = x' A^T`` where ``x'`` is ``x`` with the elements at flat ``positions`` zeroed
    (``None``: none): LoRA's dropout and down projection as one node, for CPU float math.

    Backward writes ``dx`` as ``dh A`` and zeroes the dropped positions in place (no copy
    of the gradient), and computes ``dA`` as ``(x'^T dh)^T``: MKL runs that
    ``(d_in x N)(N x r)`` product 15-25% faster than autograd's ``(r x N)(N x d_in)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lora_a: Tensor, positions: Tensor | None) -> Tensor:  # noqa: ANN001
        d_in = x.shape[-1]
        kept = (x if positions is None else _zeroed_copy(x, positions)).reshape(-1, d_in)
        ctx.save_for_backward(kept, lora_a, positions)
        ctx.x_shape = x.shape
        return torch.mm(kept, lora_a.t()).view(*x.shape[:-1], lora_a.shape[0])

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        kept, lora_a, positions = ctx.saved_tensors
        grad_h = grad_h.reshape(-1, lora_a.shape[0])  # (N, r)
        grad_x = grad_a = None
        if ctx.needs_input_grad[1]:
            grad_a = torch.mm(kept.t(), grad_h).t()  # (r, d_in), a transposed view
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_h, lora_a)  # (N, d_in), fresh: masked in place
            if positions is not None:
                grad_x.view(-1).index_fill_(0, positions, 0.0)
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, grad_a, None


class LoRADropout(nn.Module):
    """Inverted dropout, ``x * keep / (1 - p)`` with ``P(keep = 0) = p`` per element.

    On CPU the mask is drawn sparsely: the gaps between dropped elements of a Bernoulli(p)
    sequence are i.i.d. Geometric(p), so ``n p`` gaps (inverse-transform sampled from
    31-bit uniforms of the default generator) place the dropped elements exactly, and
    only those are written. PyTorch's CPU Bernoulli sampler draws one float per element
    and dominated LoRA's cost there (~7 ms per 1024 x 768 input, fwd + bwd). Elsewhere
    (CUDA's Philox sampler is cheap) this is ``F.dropout``.

    :class:`GatedLoRALinear` uses :meth:`drop_positions` directly: it zeroes the dropped
    elements inside its down projection and folds ``1 / (1 - p)`` into the LoRA scale.
    """

    # Gaps drawn beyond the expected n p: 8 standard deviations, then more if ever short.
    _MARGIN_SD = 8.0

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0 or math.isnan(p):
            raise ValueError(f"dropout={p}: must be in [0, 1)")
        self.p = p

    def drop_positions(self, n: int) -> Tensor:
        """Sorted flat indices in ``[0, n)`` of the elements to drop (CPU, int64)."""
        if self.p == 0.0:
            return torch.empty(0, dtype=torch.int64)
        log_keep = math.log1p(-self.p)
        mean = n * self.p
        k = math.ceil(mean + self._MARGIN_SD * math.sqrt(mean * (1.0 - self.p))) + 16
        chunks, last = [], -1
        while True:
            raw = torch.empty((k + 1) // 2, dtype=torch.int64).random_()  # 63 random bits
            uniform = (raw.view(torch.int32)[:k] & 0x7FFFFFFF).double().add_(1.0)
            uniform.mul_(2.0**-31)  # (0, 1]
            gaps = uniform.log_().div_(log_keep).floor_().long().add_(1)  # Geometric(p) >= 1
            positions = gaps.cumsum_(0).add_(last)
            if int(positions[-1]) >= n:
                chunks.append(positions[: int(torch.searchsorted(positions, n))])
                return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            chunks.append(positions)
            last = int(positions[-1])

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _ZeroAt.apply(x, self.drop_positions(x.numel())) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GatedLoRALinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` with a gated low-rank path and a dense retention.

    Args:
        base: the projection to wrap; its weight (and bias) are frozen, not copied.
        rank: maximum LoRA rank ``r``.
        lora_alpha: LoRA scaling numerator; ``scale = lora_alpha / rank``.
        dropout: dropout on the input of the low-rank path.
        gate_init_logit: initial gate logit (3.0 -> sigmoid ≈ 0.95, gates start open).
        use_gates: ``False`` gives plain LoRA (KD LoRA baseline): no gate parameters.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        lora_alpha: float,
        dropout: float = 0.0,
        gate_init_logit: float = 3.0,
        use_gates: bool = True,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank}: must be >= 1")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = rank
        self.scale = lora_alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))  # (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in PEFT / standard LoRA
        self.gate_logits = (
            nn.Parameter(torch.full((rank,), float(gate_init_logit), **factory))
            if use_gates
            else None
        )
        self.dropout = LoRADropout(dropout)
        # A buffer so it travels with state_dict; the Python float mirror lets forward
        # branch on it without a device sync.
        self.register_buffer("retention", torch.ones((), device=base.weight.device))
        self._retention_value = 1.0

    # -- the one place where gates and scale are folded into the factors ---------------
    def gates(self) -> Tensor:
        """Per-rank gate values ``g = sigmoid(gate_logits)`` (ones without gates). (r,)"""
        if self.gate_logits is None:
            return torch.ones(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.sigmoid(self.gate_logits)

    def rank_scale(self) -> Tensor:
        """``scale * g`` per rank, applied between A and B. (r,)"""
        return self.gates() * self.scale

    def low_rank_factors(self) -> tuple[Tensor, Tensor]:
        """Effective factors ``(A, B * scale * g)`` so that the low-rank path is ``B' A x``."""
        return self.lora_A, self.lora_B * self.rank_scale()

    def delta_weight(self) -> Tensor:
        """The low-rank path as a dense matrix ``scale * B diag(g) A``. (d_out, d_in)"""
        a, b = self.low_rank_factors()
        return b @ a

    # -- retention (written by the controller only) -------------------------------------
    @property
    def retention_value(self) -> float:
        return self._retention_value

    def set_retention(self, value: float) -> None:
        """Set alpha in [0, 1]. Called by :class:`~bl_core.controller.BudgetController`."""
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"retention={value}: must be in [0, 1]")
        self._retention_value = float(value)
        self.retention.fill_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.retention.is_meta:
            self._retention_value = float(self.retention.item())

    @property
    def dense_cost(self) -> int:
        """MACs per token of the dense path, ``c_m = d_in * d_out`` (DESIGN §4)."""
        return self.in_features * self.out_features

    # -- forward ------------------------------------------------------------------------
    def _down(self, x: Tensor) -> tuple[Tensor, float]:
        """``(A x', 1 / (1 - p))``: the down projection of the dropped-out input ``x'``,
        the dropout's rescaling left to the caller (``(A x, 1.0)`` without dropout)."""
        drop = self.dropout
        active = drop.training and drop.p > 0.0
        if x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            positions = drop.drop_positions(x.numel()) if active else None
            h = _MaskedDown.apply(x, self.lora_A, positions)
            return h, 1.0 / (1.0 - drop.p) if active else 1.0
        return F.linear(drop(x), self.lora_A), 1.0

    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in) -> (..., d_out)
        h, keep_scale = self._down(x)  # (..., r)
        scale = self.scale * keep_scale  # dropout's 1 / (1 - p) joins the LoRA scale
        if self.gate_logits is not None:  # per-rank gates: one (..., r) pass, in h's dtype
            h = h * (torch.sigmoid(self.gate_logits) * scale).to(h.dtype)
            scale = 1.0
        alpha = self._retention_value
        if alpha == 0.0:  # the dense matmul is skipped: this is the training-time saving
            return F.linear(h, self.lora_B if scale == 1.0 else self.lora_B * scale)
        dense = self.base(x)  # (..., d_out)
        # One GEMM adds the low-rank path onto the dense output, with the retention and the
        # LoRA scale as its coefficients: no separate scale or sum pass over (..., d_out).
        out = torch.addmm(
            dense.reshape(-1, self.out_features),
            h.reshape(-1, self.rank),
            self.lora_B.t(),
            beta=alpha,
            alpha=scale,
        )
        return out.view(dense.shape)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, scale={self.scale:g}, gated={self.gate_logits is not None}, "
            f"retention={self._retention_value:g}"
        )
