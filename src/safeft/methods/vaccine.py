"""Vaccine: perturbation-aware alignment (Huang et al., 2024, arXiv:2402.01109)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import EPS, AlignmentTrainer, MethodConfig, global_norm
from safeft.methods.hooks import (
    HOOK_POINTS,
    add_to_outputs,
    capture_gradient_edges,
    capture_output_grads,
    hook_points,
)


@dataclass
class VaccineConfig(MethodConfig):
    """Vaccine (perturbation-aware alignment)"""

    perturbation_radius: float = option(
        2.0, "norm of the hidden-state perturbation, ρ in the paper", range=(0.0, None)
    )
    hook_point: str = option(
        "attention",
        "where h_l is taken in each block: the attention output (reference) or the block output",
        choices=HOOK_POINTS,
    )
    perturbation_norm: str = option(
        "local",
        "norm of G over this process's batch (local, as the reference) or summed over all processes (global)",
        choices=("local", "global"),
    )


@dataclass
class VaccineResult:
    loss_before: torch.Tensor  # L_a(w) without perturbation
    loss_after: torch.Tensor  # L_a(w) with eps added to the hidden outputs
    hidden_grad_norm: torch.Tensor  # sqrt(sum_l ||G_l||^2)
    perturbation_norm: torch.Tensor  # ||eps|| (= rho unless G vanished)
    perturbations: list[torch.Tensor | None]


def perturbation_aware_gradient(
    trainer: AlignmentTrainer,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    points: Sequence[nn.Module],
    rho: float,
    reduce_squared_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> VaccineResult:
    """Vaccine's gradient on one batch; leaves it in `.grad` of the trainer's active parameters.

    `points` are the modules whose hidden outputs h_l are perturbed; the norm of G is taken over
    exactly these. `reduce_squared_norm` turns the local sum of squares into a global one.
    """
    # 1. Forward + backward of L_a, recording G_l = dL_a/dh_l at every hook point.
    loss_before, hidden_grads = hidden_output_gradients(trainer, model, batch, points)

    # 2. eps_l = rho * G_l / (sqrt(sum_l ||G_l||^2) + eps): one norm over all blocks together.
    #    G_l is scaled in place: it is not needed any more, and a copy would double its memory.
    present = [g for g in hidden_grads if g is not None]
    squared = global_norm(present) ** 2
    if reduce_squared_norm is not None:
        squared = reduce_squared_norm(squared)
    scale = rho / (squared.sqrt() + EPS)
    if present:
        torch._foreach_mul_(present, scale.to(present[0].device))
    perturbations = hidden_grads

    # 3. Zero the parameter gradients; forward + backward again with the constant eps_l added to h_l.
    trainer.zero_grads()
    with add_to_outputs(points, perturbations):
        loss_after = trainer.lm_loss(model, batch)[0]  # [0]: the outputs (logits) are freed before backward
        trainer.backward(loss_after)

    return VaccineResult(
        loss_before=loss_before.detach(),
        loss_after=loss_after.detach(),
        hidden_grad_norm=squared.sqrt(),
        perturbation_norm=global_norm([e for e in perturbations if e is not None]),
        perturbations=perturbations,
    )


def hidden_output_gradients(
    trainer: AlignmentTrainer, model: nn.Module, batch: dict[str, torch.Tensor], points: Sequence[nn.Module]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """(L(w), [dL/dh_l at each point]) of one forward/backward; leaves `.grad` as it found it.

    Only G is wanted (the algorithm zeroes the parameter gradients afterwards), so on one process
    autograd is asked for G alone: no parameter gradients are computed and the backward stops at
    the lowest hook point. Under DDP every forward with gradient sync must be followed by a full
    backward, so there the parameter gradients are computed and dropped.
    """
    if trainer.accelerator.num_processes == 1:
        with capture_gradient_edges(points) as edges:
            loss = trainer.lm_loss(model, batch)[0]
        wanted = [i for i, e in enumerate(edges) if e is not None]
        grads: list[torch.Tensor | None] = [None] * len(points)
        if wanted:
            for i, g in zip(wanted, torch.autograd.grad(loss, [edges[i] for i in wanted]), strict=True):
                grads[i] = g
        return loss.detach(), grads
    with capture_output_grads(points) as grads:
        loss = trainer.lm_loss(model, batch)[0]
        trainer.backward(loss)
    trainer.zero_grads()
    return loss.detach(), grads


def squared_norm_reducer(
    trainer: AlignmentTrainer, mode: str
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For perturbation_norm='global' with several processes: the sum over processes of the squares."""
    if mode != "global" or trainer.accelerator.num_processes == 1:
        return None
    device = trainer.args.device
    return lambda squared: trainer.accelerator.reduce(squared.to(device), reduction="sum")


class VaccineTrainer(AlignmentTrainer):
    """What changes compared with SFT: each step's gradient is taken with the hidden states perturbed.

    Huang et al., "Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful
    Fine-tuning Attack", NeurIPS 2024 (arXiv:2402.01109). Two forward/backward passes per step on the
    same alignment batch: the first finds the worst-case direction of each block's hidden output, the
    second computes the gradient the optimizer uses with that perturbation (norm ρ) added.
    """

    config_cls = VaccineConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.points = hook_points(self.model, self.method_config.hook_point)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        batch = self._prepare_inputs(inputs)
        cfg = self.method_config
        with self.own_gradient():
            # Steps 1-3 of the algorithm (record G, form eps, perturbed pass): see perturbation_aware_gradient.
            result = perturbation_aware_gradient(
                self,
                model,
                batch,
                self.points,
                cfg.perturbation_radius,
                squared_norm_reducer(self, cfg.perturbation_norm),
            )
        self.record("vaccine/loss_before", result.loss_before)
        self.record("vaccine/loss_after", result.loss_after)
        self.record("vaccine/perturbation_norm", result.perturbation_norm)
        self.record("vaccine/hidden_grad_norm", result.hidden_grad_norm)
        return self.reported(result.loss_after)
