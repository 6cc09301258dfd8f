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
        900, "optimizer steps on the user's data per cycle (reference 900)", range=(1, None)
    )
    alignment_steps: int = option(
        100, "optimizer steps on alignment data per cycle (reference 100)", range=(1, None)
    )
    proximal_weight: float = option(
        0.01, "weight of the proximal term ρ/2·||w - w_other||², ρ in the paper", range=(0.0, None)
    )
    proximal_warmup_ratio: float = option(
        0.1, "fraction of the total steps before the proximal term is switched on", range=(0.0, 1.0)
    )


def phase_at(step: int, finetune_steps: int, alignment_steps: int) -> str:
    """The state of optimizer step `step`: first `finetune_steps` on user data, then `alignment_steps`, repeat."""
    return FINETUNE if step % (finetune_steps + alignment_steps) < finetune_steps else ALIGNMENT


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], rho: float) -> torch.Tensor:
    """ρ/2 · Σ ||w - w_other||² (differentiable in params)."""
    return rho / 2 * sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchor, strict=True))


class LisaTrainer(AlignmentTrainer):
    """What changes compared with SFT: fine-tuning alternates with alignment steps, tied by a proximal term.

    Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful
    Fine-tuning Attack", NeurIPS 2024 (arXiv:2405.18641). A fine-tuning-stage defense: steps in the
    fine-tuning state use the user's batch, steps in the alignment state an alignment batch (the
    user's batch drawn by Trainer is then unused). Both add ρ/2·||w - w_other||², where w_other are the
    weights at the last switch of state (the last weights of the other state), once the first
    `proximal_warmup_ratio` of the steps are done. The state is a pure function of the step, so every
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
        if step >= cfg.proximal_warmup_ratio * self.state.max_steps and cfg.proximal_weight > 0:
            proximal = proximal_term(self.trainable, self.anchor, cfg.proximal_weight)
            loss = loss + proximal
            self.record("lisa/proximal", proximal)
        self.record(f"lisa/{phase}_loss", loss_task)
        self.record("lisa/alignment_state", float(phase == ALIGNMENT))
        return (loss, outputs) if return_outputs else loss
