"""Lisa: lazy safety alignment during fine-tuning (Huang et al., 2024, arXiv:2405.18641)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import AlignmentTrainer, MethodConfig

FINETUNE, ALIGNMENT = "finetune", "alignment"


@dataclass
class LisaConfig(MethodConfig):
    """Lisa (alternate user data and alignment data with a proximal term)"""

    finetune_steps: int = option(
        900,
        "optimizer steps on the user's data per cycle, after the alignment steps (reference 900)",
        range=(1, None),
    )
    alignment_steps: int = option(
        100, "optimizer steps on alignment data at the start of each cycle (reference 100)", range=(1, None)
    )
    proximal_weight: float = option(
        0.01, "weight of the proximal term ρ/2·||w - w_other||², ρ in the paper", range=(0.0, None)
    )
    proximal_warmup_ratio: float = option(
        0.1,
        "the proximal term is on at the steps after this fraction of the total steps (reference 0.1)",
        range=(0.0, 1.0),
    )


def phase_at(step: int, finetune_steps: int, alignment_steps: int) -> str:
    """The state of optimizer step `step`: first `alignment_steps` on alignment data, then `finetune_steps`, repeat.

    The reference starts in the alignment state (git-disl/Lisa `ADMMTrainer.init`: `status = "alignment"`).
    """
    return ALIGNMENT if step % (finetune_steps + alignment_steps) < alignment_steps else FINETUNE


def proximal_is_on(step: int, total_steps: int, warmup_ratio: float) -> bool:
    """The reference's warm-up: the proximal term is added once `step > warmup_ratio · total_steps` (strictly)."""
    return step > warmup_ratio * total_steps


def add_proximal_term(
    loss: torch.Tensor, params: list[torch.Tensor], anchor: list[torch.Tensor], rho: float
) -> torch.Tensor:
    """loss + ρ/2 · Σ ||w - w_other||², added one tensor at a time as the reference does (same rounding)."""
    for p, a in zip(params, anchor, strict=True):
        loss = loss + rho / 2 * torch.norm(p - a.detach()) ** 2
    return loss


class LisaTrainer(AlignmentTrainer):
    """What changes compared with SFT: fine-tuning alternates with alignment steps, tied by a proximal term.

    Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful
    Fine-tuning Attack", NeurIPS 2024 (arXiv:2405.18641). A fine-tuning-stage defense: steps in the
    fine-tuning state use the user's batch, steps in the alignment state an alignment batch (the
    user's batch drawn by Trainer is then unused); each cycle starts in the alignment state, as the
    reference does. Both add ρ/2·||w - w_other||², where w_other are the weights at the last switch of
    state (the last weights of the other state), at the steps after the first
    `proximal_warmup_ratio` of the steps. The state is a pure function of the step, so every
    process switches together. w_other is saved with every checkpoint, so a resumed run continues exactly.
    """

    config_cls = LisaConfig
    needs_alignment = True
    supports_sharded_parameters = (
        False  # the proximal anchor copies whole parameters outside forward (FSDP/ZeRO shard them)
    )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._phase: str | None = None
        self.anchor: list[torch.Tensor] = []

    def method_state(self) -> dict[str, Any]:
        return {"phase": self._phase, "anchor": self.anchor}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self._phase = state["phase"]
        if state["anchor"]:
            anchor = [a.to(p.device) for a, p in zip(state["anchor"], self.trainable, strict=True)]
            self.anchor = self.copy_into("anchor", anchor)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        cfg = self.method_config
        step = self.state.global_step
        phase = phase_at(step, cfg.finetune_steps, cfg.alignment_steps)
        if phase != self._phase:  # switching state: the current weights become the other state's last weights
            self._phase = phase
            self.anchor = self.copy_into("anchor", self.trainable)
        batch = (
            inputs
            if phase == FINETUNE
            else self.next_batch("alignment", self.args.per_device_train_batch_size)
        )
        loss_task, outputs = self.lm_loss(model, batch)
        loss = loss_task
        if proximal_is_on(step, self.state.max_steps, cfg.proximal_warmup_ratio) and cfg.proximal_weight > 0:
            loss = add_proximal_term(loss, self.trainable, self.anchor, cfg.proximal_weight)
            self.record("lisa/proximal", loss.detach() - loss_task.detach())
        self.record(f"lisa/{phase}_loss", loss_task)
        self.record("lisa/alignment_state", float(phase == ALIGNMENT))
        return (loss, outputs) if return_outputs else loss
