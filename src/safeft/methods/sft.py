"""SFT: the baseline every defense is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from safeft.methods.base import AlignmentTrainer, MethodConfig


@dataclass
class SFTConfig(MethodConfig):
    """Plain supervised fine-tuning (no hyper-parameters beyond the optimiser's)"""


class SFTTrainer(AlignmentTrainer):
    """What changes compared with SFT: nothing — this is SFT, minimising `L_a(w)` with Trainer's own step.

    Reference: the SFT baseline of Vaccine (Huang et al., 2024, arXiv:2402.01109) and Booster
    (Huang et al., 2025, arXiv:2409.01586). The loss is Trainer's: the model's cross-entropy,
    normalised over the response tokens of the whole accumulated batch.
    """

    config_cls = SFTConfig
    loss_is_scaled_for_ga = None  # Trainer decides, as for any model
