"""RepNoise: representation noising (Rosati et al., 2024, arXiv:2405.14577)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import AlignmentTrainer, MethodConfig


@dataclass
class RepNoiseConfig(MethodConfig):
    """RepNoise (push harmful representations towards noise, ascend the harmful loss)"""

    ascent_weight: float = option(
        0.1,
        "weight of the gradient ascent on the harmful loss, α in the Booster comparison",
        range=(0.0, None),
    )
    noise_weight: float = option(
        0.001,
        "weight of the MMD between harmful representations and Gaussian noise, β in the Booster comparison",
        range=(0.0, None),
    )
    harmful_batch_size: int = option(10, "harmful rows per micro-batch", range=(1, None))
    mmd_bandwidth: float | None = option(
        None, "σ of the Gaussian kernel exp(-||x-y||²/(2σ²)); default sqrt(hidden size)", range=(0.0, None)
    )
    mmd_max_tokens: int = option(
        256, "token representations per layer sampled for the MMD (bounds its O(n²) cost)", range=(2, None)
    )


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """k(x_i, y_j) = exp(-||x_i - y_j||² / (2 σ²)) for rows x_i, y_j."""
    return torch.exp(-torch.cdist(x, y).pow(2) / (2 * bandwidth**2))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Biased estimate of MMD² between samples x (n, d) and y (m, d) with a Gaussian kernel.

    MMD² = mean k(x, x') + mean k(y, y') - 2 mean k(x, y), means over all pairs including i = j.
    """
    return (
        gaussian_kernel(x, x, bandwidth).mean()
        + gaussian_kernel(y, y, bandwidth).mean()
        - 2 * gaussian_kernel(x, y, bandwidth).mean()
    )


class RepNoiseTrainer(AlignmentTrainer):
    """What changes compared with SFT: two terms on harmful rows join the alignment loss.

    Rosati et al., "Representation Noising: A Defence Mechanism Against Harmful Finetuning",
    NeurIPS 2024 (arXiv:2405.14577); weights as in the Booster comparison. The loss is

        L = L_a  -  α L_h  +  β · mean_l MMD²(h_l(harmful), N(0, I))

    - `L_h` is the plain token-mean cross-entropy on harmful answers, ascended (the paper's
      gradient ascent; unbounded, which is why α is small);
    - `h_l` are the outputs of every decoder block on the harmful rows (non-padding tokens, at most
      `mmd_max_tokens` sampled per layer), compared with Gaussian noise of the same shape. We
      average over layers so that β does not depend on depth.
    """

    config_cls = RepNoiseConfig
    needs_harmful = True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        cfg = self.method_config
        loss_a, outputs = self.lm_loss(model, inputs)
        harmful = self.next_batch("harmful", cfg.harmful_batch_size)
        loss_h, harmful_out = self.lm_loss(model, harmful, output_hidden_states=True)
        noise_term = self.representation_noise(harmful_out.hidden_states[1:], harmful["attention_mask"])
        loss = loss_a - cfg.ascent_weight * loss_h + cfg.noise_weight * noise_term
        self.record("repnoise/alignment_loss", loss_a)
        self.record("repnoise/harmful_loss", loss_h)
        self.record("repnoise/mmd", noise_term)
        return (loss, outputs) if return_outputs else loss

    def representation_noise(self, hidden_states: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        """mean over layers of MMD²(harmful token representations, Gaussian noise of the same shape)."""
        keep = attention_mask.bool().flatten()
        index = keep.nonzero().squeeze(1)
        if index.numel() > self.method_config.mmd_max_tokens:
            index = index[
                torch.randperm(index.numel(), device=index.device)[: self.method_config.mmd_max_tokens]
            ]
        terms = []
        for h in hidden_states:
            x = h.flatten(0, 1)[index].float()
            bandwidth = self.method_config.mmd_bandwidth or x.size(-1) ** 0.5
            terms.append(mmd(x, torch.randn_like(x), bandwidth))
        return torch.stack(terms).mean()
