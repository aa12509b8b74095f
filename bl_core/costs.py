"""Cost accounting over the adapted modules (DESIGN §5 and §7, paper Appendix E).

With dense cost ``C_d = sum_m d_in d_out`` and LoRA cost ``C_L = sum_m r (d_in + d_out)``:

    inference speedup (MAC)  = C_d / sum_m compressed_MACs_m
    param reduction vs LoRA  = 1 - compressed_params / (C_d + C_L)
    train compute (vs KD Full): kd_full 1, kd_lora (2 C_d + 3 C_L) / (3 C_d),
                                budgeted (2 rho C_d + 3 C_L) / (3 C_d)

where ``rho`` is the mean retained dense fraction over training, analytically
``p_s + (p_e - p_s)(1 + F)/2 + (1 - p_e) F`` for the cosine schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bl_core.forms import ModulePlan


def dense_cost(shapes: Iterable[tuple[int, int]]) -> int:
    """``C_d``: dense MACs per token of modules given as ``(d_in, d_out)``."""
    return sum(d_in * d_out for d_in, d_out in shapes)


def lora_cost(shapes: Iterable[tuple[int, int]], rank: int) -> int:
    """``C_L``: low-rank MACs per token at rank ``rank``."""
    return sum(rank * (d_in + d_out) for d_in, d_out in shapes)


def analytic_mean_retention(
    final_fraction: float, schedule_start: float, schedule_end: float
) -> float:
    """``rho-bar`` of the cosine schedule (the cosine averages to its midpoint)."""
    return (
        schedule_start
        + (schedule_end - schedule_start) * (1.0 + final_fraction) / 2.0
        + (1.0 - schedule_end) * final_fraction
    )


def train_compute_proxy(
    method: str, dense: float, lora: float, mean_retention: float | None = None
) -> float:
    """Student-side training compute relative to KD Full (paper Appendix E)."""
    if method in ("kd_full", "pretrain"):
        return 1.0
    if method == "kd_lora":
        return (2.0 * dense + 3.0 * lora) / (3.0 * dense)
    if method == "budgeted":
        if mean_retention is None:
            raise ValueError("budgeted train compute needs mean_retention")
        return (2.0 * mean_retention * dense + 3.0 * lora) / (3.0 * dense)
    raise ValueError(f"method={method!r}: expected pretrain, kd_full, kd_lora or budgeted")


def compression_summary(plans: Sequence[ModulePlan], lora_rank: int) -> dict[str, Any]:
    """Paper Table 8 figures plus MAC speedup and parameter reduction vs LoRA."""
    shapes = [(p.d_in, p.d_out) for p in plans]
    dense = dense_cost(shapes)
    compressed = sum(p.compressed_macs for p in plans)
    lowrank = [p for p in plans if p.form != "keep"]
    return {
        "num_modules": len(plans),
        "dense_kept": sum(p.form == "keep" for p in plans),
        "dense_svd": sum(p.form == "svd" for p in plans),
        "dense_dropped": sum(p.form == "drop" for p in plans),
        "avg_rank": sum(p.lora_rank for p in plans) / len(plans) if plans else 0.0,
        "avg_deployed_rank": (sum(p.rank for p in lowrank) / len(lowrank) if lowrank else 0.0),
        "dense_macs": dense,
        "compressed_macs": compressed,
        "infer_speedup_mac": dense / compressed if compressed else float("inf"),
        "param_reduction_vs_lora": 1.0 - compressed / (dense + lora_cost(shapes, lora_rank)),
    }
