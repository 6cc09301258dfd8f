"""Cost of each post-fine-tuning repair (SafeLoRA, Antidote): seconds and peak live-tensor bytes of one repair.

Every repair gets its own copy of the benchmark model with a LoRA adapter whose B matrices are
seeded random (a fine-tuned adapter is not zero), the same for every method. SafeLoRA's "aligned"
model is a copy of the base model with a seeded rank-r change of each adapted weight; Antidote's
calibration rows are `rows` equal-length random rows in batches of the benchmark batch size. What
is timed is the `repair` call itself, after the models are in memory (a real `safeft repair` also
loads them from disk: the base, the aligned model for SafeLoRA, the fine-tuned one).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from safeft.bench.training import Spread, StepSetup, fixed_rows, step_peak_bytes
from safeft.data.tokenize import PaddingCollator
from safeft.models import LoraSettings, attach_lora
from safeft.repair import REPAIRS
from safeft.repair.base import PEFT_PREFIX, RepairInputs, lora_pairs

log = logging.getLogger("safeft.bench")


def _fine_tuned(base_model: Any, setup: StepSetup) -> Any:
    torch.manual_seed(setup.seed)
    model = attach_lora(copy.deepcopy(base_model), LoraSettings(r=setup.lora_r))
    g = torch.Generator().manual_seed(setup.seed)
    with torch.no_grad():
        for _, b in lora_pairs(model).values():
            b.weight.copy_(torch.randn(b.weight.shape, generator=g) * 0.01)
    return model


def _aligned(base_model: Any, layers: list[str], setup: StepSetup) -> Any:
    aligned = copy.deepcopy(base_model)
    modules = dict(aligned.named_modules())
    g = torch.Generator().manual_seed(setup.seed + 1)
    with torch.no_grad():
        for name in layers:
            w = modules[name].weight
            change = torch.randn(w.shape[0], setup.lora_r, generator=g) @ torch.randn(
                setup.lora_r, w.shape[1], generator=g
            )
            w.add_(change * 1e-3)
    return aligned


def _inputs(base_model: Any, model: Any, pad_id: int, setup: StepSetup, rows: int) -> RepairInputs:
    layers = list(lora_pairs(model))
    aligned = _aligned(base_model, layers, setup)
    vocab = base_model.get_input_embeddings().weight.shape[0]
    encoded = fixed_rows(rows, setup.seq_len, vocab, setup.seed)
    collate = PaddingCollator(pad_id)

    def batches(source: str, n: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, rows, setup.batch_size):
            yield collate(encoded[start : start + setup.batch_size])

    def no_models(name: str) -> tuple[Any, Any]:
        raise AssertionError("the benchmark gives the repairs their models in memory")

    fan_in_fan_out = {
        n.removeprefix(PEFT_PREFIX) for n, m in model.named_modules() if getattr(m, "fan_in_fan_out", False)
    }
    return RepairInputs(no_models, lambda: (aligned, base_model), batches, fan_in_fan_out)


def measure_repairs(
    base_model: Any, pad_id: int, setup: StepSetup, reps: int, rows: int
) -> dict[str, dict[str, Any]]:
    """Per repair method: seconds of `reps` repairs (each on a fresh copy) and the peak bytes of one."""
    out = {}
    for name, spec in REPAIRS.items():
        times = []
        for rep in range(reps + 1):  # one more for memory, first, under the profiler
            model = _fine_tuned(base_model, setup)
            inputs = _inputs(base_model, model, pad_id, setup, rows)
            config = spec.config_cls()

            repair = functools.partial(spec.repair, model, config, inputs)
            if rep == 0:
                peak, _ = step_peak_bytes(repair)
                continue
            start = time.perf_counter()
            repair()
            times.append(time.perf_counter() - start)
        out[name] = {
            "seconds": Spread(times).__dict__,
            "transient_peak_bytes": peak,
            "calibration_rows": rows if name == "antidote" else 0,
        }
        log.info("repair %s: %.2fs", name, out[name]["seconds"]["median"])
    return out
