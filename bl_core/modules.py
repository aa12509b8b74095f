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


class LoRADropout(nn.Module):
    """Inverted dropout, ``x * keep / (1 - p)`` with ``P(keep = 0) = p`` per element.

    On CPU the mask comes from 15-bit integers cut out of 64-bit draws of the default
    generator: four elements per draw instead of one float draw each, which makes the
    forward + backward about 2x faster than ``nn.Dropout`` (PyTorch's CPU Bernoulli
    sampler dominates LoRA's cost there: ~7 ms per 1024 x 768 input, a third of a
    budgeted step at F = 0). ``p`` is rounded to a multiple of 1/32768 (0.05 ->
    0.049988) and kept elements scaled by ``1 / (1 - rounded p)``. Elsewhere (CUDA's
    Philox sampler is cheap) this is ``F.dropout``.
    """

    _BITS = 15

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout={p}: must be in [0, 1)")
        self.p = p
        self._threshold = round(p * (1 << self._BITS))  # drop where bits < threshold
        # kept elements scaled for the rounded p, so that E[output] = x exactly
        self._scale = 1.0 / (1.0 - self._threshold / (1 << self._BITS))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
        bits = draws.view(torch.int16)[:n].view(x.shape) & ((1 << self._BITS) - 1)
        keep = (bits >= self._threshold).to(x.dtype)
        return x * keep.mul_(self._scale)

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
        self.dropout = LoRADropout(dropout) if dropout > 0 else nn.Identity()
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
    def forward(self, x: Tensor) -> Tensor:  # x: (..., d_in) -> (..., d_out)
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        scale = self.scale
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


class LowRankLinear(nn.Module):
    """Two stacked linears ``d_in -> rank -> d_out``: the drop and svd forms of DESIGN §5.

    Weights: ``down.weight`` (rank, d_in), ``up.weight`` (d_out, rank), optional
    ``up.bias`` (d_out,). Contains no gates, no retention, no controller.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def dense_weight(self) -> Tensor:
        """The dense equivalent ``up @ down`` (for inspection; forward never builds it)."""
        return self.up.weight @ self.down.weight

    def forward(self, x: Tensor) -> Tensor:  # (..., d_in) -> (..., d_out)
        # F.linear on the weights directly: two GEMMs, no nested module calls.
        return F.linear(F.linear(x, self.down.weight), self.up.weight, self.up.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
