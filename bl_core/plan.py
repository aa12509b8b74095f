"""What a budget does to a model, before any training (``bl plan``).

Instantiates the student on the meta device (no weights allocated), runs the budget
controller over a full schedule with all gates open, plans the compression and
reports the efficiency figures of DESIGN §5 and §7.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from bl_core.compression import plan_compression
from bl_core.config import BudgetedLoRAConfig
from bl_core.controller import BudgetController
from bl_core.costs import (
    analytic_mean_retention,
    compression_summary,
    dense_cost,
    lora_cost,
    train_compute_proxy,
)
from bl_core.student import inject_gated_lora, select_layers, student_config


def plan_budget(
    teacher_config: PretrainedConfig, cfg: BudgetedLoRAConfig, total_steps: int = 1000
) -> dict[str, Any]:
    """Run the controller and the compression planner on a meta-device student."""
    indices = select_layers(
        teacher_config.num_hidden_layers, cfg.student.num_layers, cfg.student.layer_selection
    )
    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(student_config(teacher_config, indices))
    modules = inject_gated_lora(
        student, cfg.lora.rank, cfg.lora.lora_alpha, targets=cfg.lora.targets
    )
    controller = BudgetController(
        modules,
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
    plans = plan_compression(modules, cfg.compression, assume_open_gates=True)
    shapes = [(p.d_in, p.d_out) for p in plans]
    dense, lora = dense_cost(shapes), lora_cost(shapes, cfg.lora.rank)
    b = cfg.budget
    rho_analytic = analytic_mean_retention(b.final_fraction, b.schedule_start, b.schedule_end)
    rho_measured = controller.mean_retained_fraction()
    return {
        "teacher_layers": teacher_config.num_hidden_layers,
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
