"""What a budget does to a model, before any training (``bl plan``).

Runs the budget controller over a full schedule with all gates open, plans the
compression and reports the efficiency figures of DESIGN §5 and §7. Only the shapes of
the student's projections matter, so no weights exist: a Llama-family config.json is
read directly (:mod:`bl_core.architecture`, no torch import, so ``bl plan`` answers in
well under a second); any other architecture is instantiated on the meta device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bl_core.architecture import (
    Projection,
    is_llama_family,
    llama_family_projections,
    select_layers,
)
from bl_core.config import BudgetedLoRAConfig
from bl_core.controller import BudgetController
from bl_core.costs import (
    analytic_mean_retention,
    compression_summary,
    dense_cost,
    lora_cost,
    train_compute_proxy,
)
from bl_core.forms import plan_projection

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class _Retention:
    """What the controller reads and writes of a gated module, for a plan without weights."""

    gate_logits = None

    def __init__(self, projection: Projection) -> None:
        self.dense_cost = projection.d_in * projection.d_out
        self.retention_value = 1.0

    def set_retention(self, value: float) -> None:
        self.retention_value = value


def meta_projections(
    teacher_config: PretrainedConfig, indices: Sequence[int], targets: Sequence[str]
) -> list[Projection]:
    """The student's targeted projections, read off a meta-device instance (any
    architecture transformers knows; imports torch)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bl_core.student import inject_gated_lora, student_config

    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(student_config(teacher_config, indices))
    return [
        Projection(name, m.in_features, m.out_features, m.base.bias is not None)
        for name, m in inject_gated_lora(student, 1, 1.0, targets=targets)
    ]


def student_projections(
    teacher_config: PretrainedConfig | Mapping[str, Any],
    indices: Sequence[int],
    targets: Sequence[str],
) -> list[Projection]:
    """From a config.json dict of the Llama family without torch, else on the meta device."""
    if isinstance(teacher_config, Mapping):
        if is_llama_family(teacher_config):
            return llama_family_projections(teacher_config, len(indices), targets)
        from transformers import AutoConfig

        teacher_config = AutoConfig.for_model(**teacher_config)
    return meta_projections(teacher_config, indices, targets)


def plan_budget(
    teacher_config: PretrainedConfig | Mapping[str, Any],
    cfg: BudgetedLoRAConfig,
    total_steps: int = 1000,
) -> dict[str, Any]:
    """Run the controller and the compression planner on the student's projections.

    ``teacher_config``: a transformers config, or a config.json dict."""
    num_teacher_layers = (
        teacher_config["num_hidden_layers"]
        if isinstance(teacher_config, Mapping)
        else teacher_config.num_hidden_layers
    )
    indices = select_layers(num_teacher_layers, cfg.student.num_layers, cfg.student.layer_selection)
    projections = student_projections(teacher_config, indices, cfg.lora.targets)
    modules = [_Retention(p) for p in projections]
    controller = BudgetController(
        [(p.name, m) for p, m in zip(projections, modules)],
        total_steps=total_steps,
        final_fraction=cfg.budget.final_fraction,
        schedule_start=cfg.budget.schedule_start,
        schedule_end=cfg.budget.schedule_end,
        ema_beta=cfg.budget.ema_beta,
        tau_drop=cfg.compression.tau_drop,
        removal_score=cfg.budget.removal_score,
    )
    for _ in range(total_steps):
        controller.step()
    # gates open: every one of the rank-r gates is 1 >= tau_rank, so all r ranks are kept
    plans = [
        plan_projection(
            p.name, p.d_in, p.d_out, p.bias, m.retention_value, cfg.lora.rank, cfg.compression
        )
        for p, m in zip(projections, modules)
    ]
    shapes = [(p.d_in, p.d_out) for p in plans]
    dense, lora = dense_cost(shapes), lora_cost(shapes, cfg.lora.rank)
    b = cfg.budget
    rho_analytic = analytic_mean_retention(b.final_fraction, b.schedule_start, b.schedule_end)
    rho_measured = controller.mean_retained_fraction()
    return {
        "teacher_layers": num_teacher_layers,
        "student_layer_indices": indices,
        "final_fraction": b.final_fraction,
        "realised_fraction": controller.retained_fraction(),
        **compression_summary(plans, cfg.lora.rank),
        "train_compute_proxy": train_compute_proxy("budgeted", dense, lora, rho_analytic),
        "train_compute_proxy_measured": train_compute_proxy("budgeted", dense, lora, rho_measured),
        "kd_lora_train_compute_proxy": train_compute_proxy("kd_lora", dense, lora),
        "mean_retention_analytic": rho_analytic,
        "mean_retention_measured": rho_measured,
        "modules": [
            {
                "name": p.name,
                "d_in": p.d_in,
                "d_out": p.d_out,
                "alpha": p.alpha,
                "form": p.form,
                "rank": p.rank,
            }
            for p in plans
        ],
    }
