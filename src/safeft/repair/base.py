"""What every repair method gets: the fine-tuned model's LoRA pairs, and the models and rows around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from safeft.errors import SafeftError

PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model


def lora_pairs(model: nn.Module) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """{adapted layer: (lora_A, lora_B)} of the active adapter, named like the plain model's modules."""
    from peft.tuners.lora import LoraLayer

    pairs = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            (adapter,) = module.active_adapters
            pairs[name.removeprefix(PEFT_PREFIX)] = (module.lora_A[adapter], module.lora_B[adapter])
    if not pairs:
        raise SafeftError(
            "the fine-tuning run has no LoRA adapter to repair (it was a full fine-tune); "
            "SafeLoRA and Antidote repair a LoRA fine-tune: run 'safeft finetune' without --lora.full-finetune"
        )
    return pairs


@dataclass
class RepairInputs:
    """Lazily loaded context of one repair: the models and data a method may ask for."""

    load_model: Callable[[str], tuple[Any, Any]]  # a name, folder or Hub id -> (model, tokenizer)
    alignment_models: Callable[[], tuple[nn.Module, nn.Module]]  # (aligned, unaligned) of the pipeline
    calibration_batches: Callable[[str, int, int], Iterator[dict[str, torch.Tensor]]]  # (source, rows, batch)
    fan_in_fan_out_layers: set[str] = field(default_factory=set)  # GPT-2 Conv1D layers: weight is (in, out)

    def fan_in_fan_out(self, layer: str) -> bool:
        return layer in self.fan_in_fan_out_layers
