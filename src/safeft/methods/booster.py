"""Booster: attenuating the harmful perturbation (Huang et al., 2025, arXiv:2409.01586)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import EPS, AlignmentTrainer, MethodConfig, global_norm
from safeft.methods.hooks import HOOK_POINTS, hook_points
from safeft.methods.vaccine import perturbation_aware_gradient, squared_norm_reducer


@dataclass
class BoosterConfig(MethodConfig):
    """Booster (attenuating harmful perturbation)"""

    harmful_weight: float = option(
        5.0, "weight of the harmful-loss reduction term, λ in the paper", range=(0.0, None)
    )
    simulated_step_size: float = option(
        0.1, "step size of the simulated normalised harmful step, α in the paper", range=(0.0, None)
    )
    harmful_batch_size: int = option(10, "harmful rows per micro-batch for L_h", range=(1, None))


@dataclass
class BoosterVaccineConfig(BoosterConfig):
    """Booster with Vaccine's perturbation-aware gradient for the alignment term"""

    perturbation_radius: float = option(
        2.0, "Vaccine's hidden-state perturbation norm for g_a, ρ in the Vaccine paper", range=(0.0, None)
    )
    hook_point: str = option("attention", "where Vaccine's h_l is taken in each block", choices=HOOK_POINTS)
    perturbation_norm: str = option(
        "local", "norm of G over this process (local) or all processes (global)", choices=("local", "global")
    )


class BoosterTrainer(AlignmentTrainer):
    """What changes compared with SFT: the gradient gains a term that attenuates a simulated harmful step.

    Huang et al., "Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating
    Harmful Perturbation", ICLR 2025 (arXiv:2409.01586). It minimises
    `L_a(w) + λ (L_h(w) - L_h(w - α g_h/||g_h||))` with `g_h` held constant: three forward/backward
    passes per step (harmful at w, harmful at the simulated w', alignment at w). Unlike the reference,
    w is restored from an exact copy (bit-identical), and gradient accumulation adds up per micro-batch.
    """

    config_cls: type[BoosterConfig] = BoosterConfig
    needs_harmful = True

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        alignment = self._prepare_inputs(inputs)
        harmful = self.next_batch("harmful", self.method_config.harmful_batch_size)
        lam, alpha = self.method_config.harmful_weight, self.method_config.simulated_step_size
        params = self.active_params()
        with self.own_gradient():
            # 1. g_h = grad L_h(w) on the harmful batch.
            loss_h = self.lm_loss(model, harmful)[0]  # [0]: drop the outputs (logits) before backward
            self.backward(loss_h)
            # g_h is the gradient tensors themselves, taken out of .grad rather than copied: the
            # next backward allocates fresh ones (no copy per step, no buffer kept between steps).
            g_h = self.grads(params)
            self.zero_grads()
            # ||g_h|| is the norm of the global harmful gradient: DDP all-reduced it, except on a
            # micro-batch before the last of an accumulation (no_sync), where it is averaged here.
            self.average_unsynchronised(g_h)
            g_h_norm = global_norm(g_h)

            # 2. w' = w - alpha * g_h / (||g_h|| + eps), keeping an exact copy of w.
            w = self.copy_into("w", params)
            with torch.no_grad():
                torch._foreach_add_(params, g_h, alpha=-alpha / (g_h_norm.item() + EPS))

            # 3. g_h' = grad L_h(w') on the same harmful batch; then restore w exactly.
            try:
                loss_h_after = self.lm_loss(model, harmful)[0]
                self.backward(loss_h_after)
            finally:
                with torch.no_grad():
                    torch._foreach_copy_(params, w)
            torch._foreach_sub_(g_h, self.grads(params))  # g_h now holds g_h - g_h'

            # 4. g_a = grad L_a(w) on the alignment batch.
            self.zero_grads()
            loss_a = self.alignment_gradient(model, alignment)

            # 5. The optimizer steps with g = g_a + lambda * (g_h - g_h').
            torch._foreach_add_(self.grads(params), g_h, alpha=lam)

        self.record("booster/alignment_loss", loss_a)
        self.record("booster/harmful_loss", loss_h)
        self.record("booster/harmful_loss_after_simulated_step", loss_h_after)
        self.record("booster/harmful_grad_norm", g_h_norm)
        return self.reported(loss_a + lam * (loss_h - loss_h_after))

    def alignment_gradient(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Step 4: leave grad L_a(w) in `.grad`; return L_a(w)."""
        loss = self.lm_loss(model, batch)[0]
        self.backward(loss)
        return loss.detach()


class BoosterVaccineTrainer(BoosterTrainer):
    """What changes compared with SFT: Booster, with step 4's g_a replaced by Vaccine's gradient.

    Booster paper's Booster+Vaccine variant (arXiv:2409.01586, Sec. 5): the alignment gradient is
    taken with the worst-case hidden-state perturbation of norm ρ added (two passes), so a step
    costs four forward/backward passes.
    """

    config_cls = BoosterVaccineConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.points = hook_points(self.model, self.method_config.hook_point)

    def alignment_gradient(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.method_config
        result = perturbation_aware_gradient(
            self,
            model,
            batch,
            self.points,
            cfg.perturbation_radius,
            squared_norm_reducer(self, cfg.perturbation_norm),
        )
        self.record("vaccine/loss_before", result.loss_before)
        self.record("vaccine/perturbation_norm", result.perturbation_norm)
        return result.loss_after
