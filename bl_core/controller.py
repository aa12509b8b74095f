"""Budget controller (DESIGN §4, paper eqs. 2-5).

Drives each gated module's dense retention ``alpha_m`` down so that the retained
dense cost ``C(t) = sum_m alpha_m c_m`` follows a cosine schedule to the final
fraction ``F`` of ``sum_m c_m``:

    f(p) = 1                                                   p <  p_s
         = F + (1 - F) * (1 + cos(pi (p - p_s)/(p_e - p_s))) / 2  p_s <= p < p_e
         = F                                                   p >= p_e

Each :meth:`BudgetController.step` (once per optimizer step, before the forward
pass) allocates targets greedily — cheapest removal score first, registration
order breaking ties — smooths them with an EMA, clamps retentions under
``tau_drop`` to 0, and writes them into the modules. Retention never rises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the controller reads numbers only: ``bl plan`` runs it without torch
    from bl_core.modules import GatedLoRALinear

RemovalScore = Callable[[str, "GatedLoRALinear"], float]


def cost_score(name: str, module: GatedLoRALinear) -> float:
    """Default removal score: the module's dense cost ``c_m`` (cheapest removed first)."""
    return float(module.dense_cost)


REMOVAL_SCORES: dict[str, RemovalScore] = {"cost": cost_score}


def scheduled_fraction(
    progress: float, final_fraction: float, schedule_start: float, schedule_end: float
) -> float:
    """Target dense fraction ``f(p)`` at training progress ``p = t / T``."""
    if progress < schedule_start:
        return 1.0
    if progress >= schedule_end:  # also covers p_s == p_e: F applies from p_s on
        return final_fraction
    phase = (progress - schedule_start) / (schedule_end - schedule_start)
    return final_fraction + (1.0 - final_fraction) * (1.0 + math.cos(math.pi * phase)) / 2.0


def allocate_targets(
    costs: Sequence[float], order: Sequence[int], budget: float, dead: Sequence[bool]
) -> list[float]:
    """Greedy allocation: all at 1 (dead modules at 0), then lower modules in ``order``
    until ``sum target_m c_m <= budget``. At most one module ends partially retained."""
    targets = [0.0 if d else 1.0 for d in dead]
    excess = sum(t * c for t, c in zip(targets, costs)) - budget
    tolerance = 1e-9 * max(sum(costs), 1.0)  # float residue must not nick the next module
    for m in order:
        if excess <= tolerance:
            break
        if dead[m] or costs[m] == 0:
            continue
        removed = min(costs[m], excess)
        targets[m] = 1.0 - removed / costs[m]
        excess -= removed
    return targets


def _short_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj``."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return f"L{parts[i + 1]}.{parts[-1]}"
    return name


class BudgetController:
    """Writes dense retentions into gated modules along the budget schedule.

    Args:
        modules: ``(name, module)`` pairs in registration order (see
            :func:`bl_core.student.inject_gated_lora`).
        total_steps: ``T``, the number of optimizer steps of the run.
        final_fraction, schedule_start, schedule_end: ``F``, ``p_s``, ``p_e``.
        ema_beta: smoothing ``beta`` (0 = jump straight to the target).
        tau_drop: retentions below this become exactly 0 and never come back.
        removal_score: name in :data:`REMOVAL_SCORES` or a callable; lower goes first.
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, GatedLoRALinear]],
        total_steps: int,
        final_fraction: float,
        schedule_start: float = 0.1,
        schedule_end: float = 0.3,
        ema_beta: float = 0.9,
        tau_drop: float = 0.05,
        removal_score: str | RemovalScore = "cost",
    ) -> None:
        if not modules:
            raise ValueError("BudgetController needs at least one gated module")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps}: must be >= 1")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"final_fraction={final_fraction}: must be in [0, 1]")
        if not 0.0 <= schedule_start <= schedule_end <= 1.0:
            raise ValueError(
                f"schedule window [{schedule_start}, {schedule_end}]: need 0 <= p_s <= p_e <= 1"
            )
        score = REMOVAL_SCORES[removal_score] if isinstance(removal_score, str) else removal_score
        self.names = [name for name, _ in modules]
        self.modules = [module for _, module in modules]
        self.costs = [float(m.dense_cost) for m in self.modules]
        self.total_cost = sum(self.costs)
        scores = [score(n, m) for n, m in modules]
        # sorted() is stable, so equal scores keep registration order (the tie-break).
        self.order = sorted(range(len(self.modules)), key=lambda i: scores[i])
        self.total_steps = total_steps
        self.final_fraction = final_fraction
        self.schedule_start, self.schedule_end = schedule_start, schedule_end
        self.ema_beta, self.tau_drop = ema_beta, tau_drop
        self.step_count = 0
        self.trajectory: list[tuple[int, float, float]] = []  # (step, target f, actual C/sum c)

    def target_fraction(self, step: int) -> float:
        """``f(t / T)``: the scheduled dense fraction at optimizer step ``step`` (pure)."""
        return scheduled_fraction(
            step / self.total_steps, self.final_fraction, self.schedule_start, self.schedule_end
        )

    @property
    def retentions(self) -> list[float]:
        return [m.retention_value for m in self.modules]

    def retained_fraction(self) -> float:
        """``C(t) / sum c``: the realised dense fraction."""
        return sum(a * c for a, c in zip(self.retentions, self.costs)) / self.total_cost

    def num_removed(self) -> int:
        return sum(1 for a in self.retentions if a == 0.0)

    def step(self) -> dict[str, float]:
        """Advance one optimizer step: allocate, smooth, clamp, write. Returns stats."""
        fraction = self.target_fraction(self.step_count)
        current = self.retentions
        dead = [a == 0.0 for a in current]
        targets = allocate_targets(self.costs, self.order, fraction * self.total_cost, dead)
        for module, alpha, target in zip(self.modules, current, targets):
            new = self.ema_beta * alpha + (1.0 - self.ema_beta) * target
            new = min(alpha, new)  # retention never rises
            if new < self.tau_drop:
                new = 0.0
            if new != alpha:
                module.set_retention(new)
        actual = self.retained_fraction()
        self.trajectory.append((self.step_count, fraction, actual))
        self.step_count += 1
        return {
            "target_fraction": fraction,
            "dense_fraction": actual,
            "num_removed": float(self.num_removed()),
        }

    def mean_retained_fraction(self) -> float:
        """Measured ``rho-bar``: mean realised dense fraction over the steps taken."""
        if not self.trajectory:
            return 1.0
        return sum(actual for _, _, actual in self.trajectory) / len(self.trajectory)

    def module_metrics(self, tau_rank: float) -> dict[str, float]:
        """Every module's alpha and active rank (gates >= ``tau_rank``), for logging:
        ``alpha/L3.q_proj``, ``rank/L3.q_proj``."""
        out: dict[str, float] = {}
        for name, m in zip(self.names, self.modules):
            short = _short_name(name)
            out[f"alpha/{short}"] = m.retention_value
            if m.gate_logits is not None:
                out[f"rank/{short}"] = float((m.gates() >= tau_rank).sum().item())
        return out

    def module_retentions(self) -> dict[str, float]:
        """Every module's alpha by name, for logging."""
        return dict(zip(self.names, self.retentions))

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "names": list(self.names),
            "retentions": self.retentions,
            "trajectory": [list(row) for row in self.trajectory],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("controller state was saved for a different set of modules")
        self.step_count = int(state["step_count"])
        self.trajectory = [(int(s), float(f), float(a)) for s, f, a in state["trajectory"]]
        for module, alpha in zip(self.modules, state["retentions"]):
            module.set_retention(float(alpha))
