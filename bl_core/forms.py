"""The compression decision per module (DESIGN §5, paper eq. 8), without torch.

From a module's final retention ``alpha`` and its number of kept ranks ``r'``:

    drop  alpha <  tau_drop            rank r'
    svd   tau_drop <= alpha < tau_svd  rank k + r'
    keep  alpha >= tau_svd             dense

with ``k = min(k_max, max(1, ceil(k_max * alpha / tau_svd)))``, and never more than the
matrix's smaller side.

:mod:`bl_core.compression` builds the deployed modules from these plans; ``bl plan``
uses them alone, so it starts without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bl_core.config import CompressionConfig

Form = Literal["keep", "svd", "drop"]


@dataclass(frozen=True)
class ModulePlan:
    """What compression does to one module; ``rank`` is the deployed rank (0 for keep).

    ``bias``: the *deployed* module carries a bias. The bias follows the dense path
    (DESIGN §3): scaled by ``alpha`` in keep and svd, gone with it in drop.
    """

    name: str
    d_in: int
    d_out: int
    alpha: float
    form: Form
    lora_rank: int
    svd_rank: int
    bias: bool

    @property
    def rank(self) -> int:
        return {"keep": 0, "svd": self.svd_rank + self.lora_rank, "drop": self.lora_rank}[self.form]

    @property
    def dense_macs(self) -> int:
        return self.d_in * self.d_out

    @property
    def compressed_macs(self) -> int:
        """MACs per token after compression (weights only, as in the paper)."""
        if self.form == "keep":
            return self.d_in * self.d_out
        return self.rank * (self.d_in + self.d_out)


def choose_form(alpha: float, cfg: CompressionConfig) -> tuple[Form, int]:
    """``(form, svd_rank k)`` for a final retention ``alpha``."""
    if alpha < cfg.tau_drop:
        return "drop", 0
    if alpha < cfg.tau_svd:
        k = min(cfg.svd_max_rank, max(1, math.ceil(cfg.svd_max_rank * alpha / cfg.tau_svd)))
        return "svd", k
    return "keep", 0


def plan_projection(
    name: str,
    d_in: int,
    d_out: int,
    has_bias: bool,
    alpha: float,
    kept_rank: int,
    cfg: CompressionConfig,
) -> ModulePlan:
    """The plan of one ``d_in -> d_out`` projection with retention ``alpha`` and
    ``kept_rank`` hardened LoRA ranks."""
    form, k = choose_form(alpha, cfg)
    return ModulePlan(
        name=name,
        d_in=d_in,
        d_out=d_out,
        alpha=alpha,
        form=form,
        lora_rank=kept_rank,
        svd_rank=min(k, d_in, d_out),  # a matrix has no more singular values
        bias=has_bias and form != "drop",
    )
