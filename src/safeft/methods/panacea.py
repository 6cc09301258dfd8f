"""Panacea: fine-tuning that learns a perturbation to add afterwards (Wang et al., 2025, arXiv:2501.18100)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import EPS, AlignmentTrainer, MethodConfig, global_norm

log = logging.getLogger("safeft")


@dataclass
class PanaceaConfig(MethodConfig):
    """Panacea (adaptive post-fine-tuning perturbation)"""

    perturbation_radius: float = option(
        1.0, "norm of the perturbation ε, ρ in the paper (eps_rho, reference 1)", range=(0.0, None)
    )
    harmful_weight: float = option(
        1e-3,
        "weight of the harmful-loss increase term, λ in the paper (lamb, reference 1e-3)",
        range=(0.0, None),
    )
    harmful_loss_cap: float = option(
        5.0,
        "h(w + ε) is clamped at this value, above which the term has no gradient (reference 5)",
        range=(0.0, None),
    )
    harmful_batch_size: int = option(10, "harmful rows per micro-batch for h (reference 10)", range=(1, None))
    add_perturbation: bool = option(
        True, "add the last step's ε to the weights after training (reference: yes)"
    )


class PanaceaTrainer(AlignmentTrainer):
    """What changes compared with SFT: the step also maximises the harmful loss after a perturbation ε.

    Wang et al., "Panacea: Mitigating Harmful Fine-tuning for Large Language Models via
    Post-fine-tuning Perturbation", 2025 (arXiv:2501.18100); reference w-yibo/Panacea `trainer.py`
    class `Panacea` @d17b2db. A fine-tuning-stage defense: on the user's batch f and a harmful batch
    h it minimises `f(w) − λ·h(w + ε)` with ε = ρ ∇h(w)/‖∇h(w)‖, whose gradient (ε held constant,
    the `∇h(w)` of the reference's update kept) is `∇f(w) − λ(∇h(w + ε) − ∇h(w))`. After training the
    last step's ε is added to the weights. The stored reference does not run (`clip_loss_h` is
    undefined, `Pancacea` is misspelt); where it is ambiguous this follows the paper and the evident
    intent of the code: the backward runs on the clamped h(w + ε) (the `loss_h = torch.clamp(...)`
    the line above it computes), w is restored from an exact copy, and ε rides along with each
    checkpoint (`method_state`) so that a resumed run adds the same ε.
    """

    config_cls = PanaceaConfig
    needs_harmful = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epsilon: list[torch.Tensor] | None = None

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        user = self._prepare_inputs(inputs)
        harmful = self.next_batch("harmful", self.method_config.harmful_batch_size)
        cfg = self.method_config
        params = self.active_params()
        with self.own_gradient():
            # 1. ∇f(w) on the user's (possibly poisoned) batch.
            loss_f = self.lm_loss(model, user)[0]
            self.backward(loss_f)
            g_f = self.copy_into("g_f", self.grads(params))

            # 2. ∇h(w) on the harmful batch; ε = ρ ∇h(w) / (‖∇h(w)‖ + eps): the direction that raises h.
            self.zero_grads()
            loss_h = self.lm_loss(model, harmful)[0]
            self.backward(loss_h)
            g_h = self.copy_into("g_h", self.grads(params))
            self.average_unsynchronised(g_h)
            g_h_norm = global_norm(g_h)
            epsilon = self.copy_into("epsilon", g_h)
            torch._foreach_mul_(epsilon, cfg.perturbation_radius / (g_h_norm.item() + EPS))

            # 3. ∇h(w + ε) of the harmful loss clamped at the cap; then restore w exactly.
            w = self.copy_into("w", params)
            with torch.no_grad():
                torch._foreach_add_(params, epsilon)
            self.zero_grads()
            try:
                loss_h_perturbed = torch.clamp(self.lm_loss(model, harmful)[0], max=cfg.harmful_loss_cap)
                self.backward(loss_h_perturbed)
            finally:
                with torch.no_grad():
                    torch._foreach_copy_(params, w)

            # 4. The optimizer steps with ∇f(w) − λ(∇h(w + ε) − ∇h(w)).
            grads = self.grads(params)
            torch._foreach_sub_(grads, g_h)
            torch._foreach_mul_(grads, -cfg.harmful_weight)
            torch._foreach_add_(grads, g_f)
        self.epsilon = [e.clone() for e in epsilon]
        self.record("panacea/harmful_loss", loss_h)
        self.record("panacea/harmful_loss_perturbed", loss_h_perturbed)
        self.record("panacea/harmful_grad_norm", g_h_norm)
        return self.reported(loss_f)

    # ----- the perturbation after training --------------------------------------------------------
    def train(self, *args: Any, **kwargs: Any) -> Any:
        result = super().train(*args, **kwargs)
        if self.method_config.add_perturbation:
            self.add_epsilon()
        return result

    def add_epsilon(self) -> None:
        """w ← w + ε with the last step's ε (the released model is the perturbed one)."""
        if self.epsilon is None:
            raise RuntimeError("Panacea: no training step ran and no checkpoint held ε; nothing to add")
        with torch.no_grad():
            torch._foreach_add_(self.trainable, self.epsilon)
        log.info("Panacea: added the last step's perturbation (norm %.4g)", global_norm(self.epsilon).item())

    def method_state(self) -> dict[str, Any]:
        # The last step's ε rides along with every checkpoint: a run resumed at its end adds the same ε.
        return {"epsilon": [e.detach().cpu() for e in self.epsilon] if self.epsilon is not None else None}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if state.get("epsilon") is not None:
            self.epsilon = [e.to(p.device) for e, p in zip(state["epsilon"], self.trainable, strict=True)]
