"""SFT: the baseline every defense is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from safeft.methods.base import AlignmentTrainer, MethodConfig


@dataclass
class SFTConfig(MethodConfig):
    """Plain supervised fine-tuning (no hyper-parameters beyond the optimiser's)"""


class SFTTrainer(AlignmentTrainer):
    """What changes compared with SFT: nothing — this is SFT, minimising `L_a(w)` with Trainer's own step.

    Reference: the SFT baseline of Vaccine (Huang et al., 2024, arXiv:2402.01109) and Booster
    (Huang et al., 2025, arXiv:2409.01586). The loss is normalised as Trainer normalises a model's
    own loss: over the response tokens of the whole accumulated (and global) batch. It is computed
    like every method's (`lm_loss`), so that time and memory compare like with like.
    """

    config_cls = SFTConfig
    loss_is_scaled_for_ga = None  # Trainer decides, as for any model

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        # Trainer's contract for a model that takes the token count: divide by it, and under
        # average_tokens_across_devices (the count is global) undo DDP's averaging over processes.
        normaliser = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss, outputs = self.lm_loss(model, inputs, num_items_in_batch=normaliser)
        if normaliser is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
