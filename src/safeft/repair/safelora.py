"""SafeLoRA: project the least aligned fine-tuning LoRA layers onto the alignment subspace.

Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large Language
Models", NeurIPS 2024; reference IBM/SafeLoRA `model.py` @d81fda1. PEFT 0.21.2 has no SafeLoRA
(nothing in `peft/` mentions it), so the projection is written here: it is a few lines of algebra.

For each LoRA-adapted weight W, with V = W_aligned − W_unaligned (the alignment's own change of W):

    C = V Vᵀ / ‖V‖_F                     the alignment matrix of W (out x out)
    cos = cos(C·B·A, B·A)                 how far the fine-tuning update B·A lies in that subspace
    B  ←  C·B   for the layers selected by cos

Selection ("number", the reference default): the `num_proj_layers` smallest cosines, ties with the
last one included (the reference takes the k-th smallest cosine as a threshold); ("threshold"):
every layer with cos ≤ `threshold`. Cosines are rounded to 5 decimals before the comparison, like
the reference, so the same layers are chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safeft.config import Config, option
from safeft.errors import SafeftError
from safeft.repair.base import RepairInputs, lora_pairs

log = logging.getLogger("safeft")


@dataclass
class SafeLoRAConfig(Config):
    """SafeLoRA (project the least aligned LoRA layers onto the alignment subspace)"""

    select: str = option(
        "number",
        "which layers to project: 'number' (the num_proj_layers with the lowest cosine) or 'threshold' "
        "(every layer with cosine <= threshold); select_layers_type in the reference",
        choices=("number", "threshold"),
    )
    num_proj_layers: int = option(
        10,
        "layers to project in 'number' mode (reference 10; one layer = one adapted weight)",
        range=(1, None),
    )
    threshold: float = option(0.5, "cosine threshold in 'threshold' mode (reference 0.5)", range=(-1.0, 1.0))
    aligned_model: str | None = option(
        None,
        "aligned model for V = W_aligned - W_unaligned (default: the alignment run the fine-tuning started "
        "from, against its base model); give it together with unaligned_model",
    )
    unaligned_model: str | None = option(
        None, "unaligned model for V (default: the base model of the alignment run)"
    )

    def check(self) -> list[str]:
        if bool(self.aligned_model) != bool(self.unaligned_model):
            return [
                f"aligned_model / unaligned_model: give both or neither (got aligned_model={self.aligned_model!r}, "
                f"unaligned_model={self.unaligned_model!r})"
            ]
        return []


def alignment_matrix(delta: torch.Tensor) -> torch.Tensor:
    """C = V Vᵀ / ‖V‖_F of one weight's alignment change V (out x in)."""
    norm = torch.linalg.matrix_norm(delta)
    if norm == 0:
        raise SafeftError(
            "SafeLoRA: the alignment did not change this weight (V = 0), so its alignment matrix is undefined; "
            "adapt only weights the alignment changed (lora.target_modules) or give aligned_model/unaligned_model"
        )
    return delta @ delta.T / norm


@dataclass
class Projection:
    """What SafeLoRA decided: per layer its cosine, whether it was projected, and the new B."""

    cosines: dict[str, float]
    projected: list[str]
    threshold: float
    new_b: dict[str, torch.Tensor]


def project(
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    matrices: dict[str, torch.Tensor],
    config: SafeLoRAConfig,
) -> Projection:
    """SafeLoRA on LoRA pairs {layer: (A, B)} with alignment matrices {layer: C}; pure, nothing edited."""
    cosines = {}
    for name, (a, b) in pairs.items():
        update = b @ a
        projected_update = matrices[name] @ update
        cos = torch.nn.functional.cosine_similarity(projected_update.reshape(1, -1), update.reshape(1, -1))
        cosines[name] = float(np.round(cos.item(), 5))  # the reference's rounding: the same ties
    if config.select == "threshold":
        threshold = config.threshold
    else:
        ranked = sorted(cosines.values())
        threshold = ranked[min(config.num_proj_layers, len(ranked)) - 1]
    projected = [name for name, cos in cosines.items() if cos <= threshold]
    new_b = {name: matrices[name] @ pairs[name][1] for name in projected}
    return Projection(cosines, projected, threshold, new_b)


def alignment_deltas(
    inputs: RepairInputs, config: SafeLoRAConfig, layers: list[str]
) -> dict[str, torch.Tensor]:
    """V = W_aligned − W_unaligned of each layer, oriented like B·A (out x in)."""
    if config.aligned_model:
        aligned, _ = inputs.load_model(config.aligned_model)
        unaligned, _ = inputs.load_model(config.unaligned_model)  # type: ignore[arg-type]
    else:
        aligned, unaligned = inputs.alignment_models()
    aligned_modules, unaligned_modules = dict(aligned.named_modules()), dict(unaligned.named_modules())
    deltas = {}
    for name in layers:
        if name not in aligned_modules or name not in unaligned_modules:
            raise SafeftError(f"SafeLoRA: the aligned and unaligned models have no module {name!r}")
        delta = (aligned_modules[name].weight - unaligned_modules[name].weight).detach().float()
        # GPT-2's Conv1D stores its weight as (in, out); B·A is (out, in).
        deltas[name] = delta.T if inputs.fan_in_fan_out(name) else delta
    return deltas


def repair(model: Any, config: SafeLoRAConfig, inputs: RepairInputs) -> dict[str, Any]:
    """Project the fine-tuning adapter of `model` in place; return what was done."""
    pairs = lora_pairs(model)
    deltas = alignment_deltas(inputs, config, list(pairs))
    matrices = {name: alignment_matrix(delta) for name, delta in deltas.items()}
    with torch.no_grad():
        weights = {name: (a.weight.float(), b.weight.float()) for name, (a, b) in pairs.items()}
        result = project(weights, matrices, config)
        for name, new_b in result.new_b.items():
            pairs[name][1].weight.copy_(new_b)
    log.info(
        "SafeLoRA: %d of %d layers projected (cosine <= %g)",
        len(result.projected),
        len(pairs),
        result.threshold,
    )
    return {
        "layers": len(pairs),
        "projected_layers": result.projected,
        "n_projected": len(result.projected),
        "cosine_threshold": result.threshold,
        "cosines": result.cosines,
    }
