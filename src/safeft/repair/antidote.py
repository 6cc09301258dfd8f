"""Antidote: after fine-tuning, zero the LoRA weights that matter most on harmful rows (Wanda score).

Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against
Harmful Fine-tuning", ICML 2025; reference git-disl/Antidote @26e2ade (`utils.py::prune_wanda_outlier`,
`train.py`). Under LoRA the reference scores the weights of the LoRA matrices themselves: every
`nn.Linear` whose name contains "lora" (the A and the B of each adapted layer), not the base weights
(docs/methods.md gives the rule with line references). For each such matrix W (out x in):

    s_j   = Σ over calibration rows and their tokens of x_j²   (x: the matrix's input; divided by the
                                                              number of rows, like the reference)
    score = |W_ij| · sqrt(s_j)                                 the Wanda metric
    zero, in every row i, the entries ranked after the first int(in · (1 − dense_ratio)) by ascending
    score (a stable sort: of equal scores, the later column is zeroed first)

The calibration rows are harmful QA pairs (prompt and response, like the reference's data), run
through the fine-tuned model with the adapter live. Padding tokens are left out of s_j; the
reference runs one row at a time and so has none.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import Config, option
from safeft.repair.base import RepairInputs, lora_pairs

log = logging.getLogger("safeft")


@dataclass
class AntidoteConfig(Config):
    """Antidote (prune the LoRA weights with the highest Wanda score on harmful rows)"""

    dense_ratio: float = option(
        0.1,
        "fraction of each row of every LoRA matrix to zero (dense_ratio in the reference, 0.1)",
        range=(0.0, 1.0),
    )
    calibration_data: str = option(
        "harmful-pool",
        "harmful QA rows for the Wanda statistics: source name or file (reference: BeaverTails)",
    )
    calibration_samples: int = option(
        1000,
        "calibration rows, the first N (reference 2,000; the shared harmful pool holds 1,388)",
        range=(1, None),
    )
    batch_size: int = option(
        8,
        "calibration rows per forward pass (padding is left out, so results do not depend on it)",
        range=(1, None),
    )


def wanda_prune_mask(weight: torch.Tensor, input_sq_norm: torch.Tensor, dense_ratio: float) -> torch.Tensor:
    """True where Antidote zeroes `weight` (out x in), given s_j of its inputs (in)."""
    score = weight.abs().float() * input_sq_norm.float().sqrt().reshape(1, -1)
    kept = int(weight.shape[1] * (1 - dense_ratio))  # the reference's count, float rounding included
    ranked = torch.sort(score, dim=-1, stable=True).indices
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask.scatter_(1, ranked[:, kept:], True)
    return mask


class InputSquareSums:
    """Σ over rows and non-padding tokens of x_j² at the input of each hooked `nn.Linear`, per row count."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.modules = modules
        self.sums = {name: torch.zeros(m.in_features) for name, m in modules.items()}
        self.rows = 0
        self.token_mask: torch.Tensor | None = None

    def _hook(self, name: str) -> Any:
        def accumulate(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = args[0].detach().float()
            mask = self.token_mask.to(x.device, x.dtype).unsqueeze(-1)  # type: ignore[union-attr]
            self.sums[name] += (x.square() * mask).sum(dim=(0, 1)).cpu()

        return accumulate

    @contextlib.contextmanager
    def hooked(self) -> Iterator[InputSquareSums]:
        handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def add_batch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        self.token_mask = batch["attention_mask"]
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        self.rows += batch["input_ids"].shape[0]

    def mean(self, name: str) -> torch.Tensor:
        return self.sums[name] / max(self.rows, 1)


def repair(model: Any, config: AntidoteConfig, inputs: RepairInputs) -> dict[str, Any]:
    """Prune the fine-tuning adapter of `model` in place; return what was done."""
    matrices = {}
    for layer, (a, b) in lora_pairs(model).items():
        matrices[f"{layer}.lora_A"], matrices[f"{layer}.lora_B"] = a, b
    stats = InputSquareSums(matrices)
    model.eval()
    with torch.no_grad(), stats.hooked():
        batches = inputs.calibration_batches(
            config.calibration_data, config.calibration_samples, config.batch_size
        )
        for batch in batches:
            stats.add_batch(model, batch)
    zeroed = total = 0
    with torch.no_grad():
        for name, linear in matrices.items():
            mask = wanda_prune_mask(linear.weight, stats.mean(name), config.dense_ratio)
            linear.weight.masked_fill_(mask.to(linear.weight.device), 0.0)
            zeroed += int(mask.sum())
            total += mask.numel()
    log.info("Antidote: zeroed %d of %d LoRA weights (%.1f%%)", zeroed, total, 100 * zeroed / max(total, 1))
    return {
        "calibration_rows": stats.rows,
        "matrices": len(matrices),
        "zeroed_weights": zeroed,
        "lora_weights": total,
        "zeroed_fraction": round(zeroed / max(total, 1), 6),
    }
