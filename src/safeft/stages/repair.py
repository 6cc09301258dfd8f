"""`safeft repair`: the post-fine-tuning stage (align -> finetune -> repair -> evaluate).

Takes a finished fine-tuning run, loads its model with the fine-tuning LoRA adapter live, lets a
repair method (SafeLoRA, Antidote: `safeft.repair`) edit that adapter, and writes a run directory
whose manifest names the fine-tuning run as its parent and lists the same weights with the repaired
adapter in place of the fine-tuning one, so `safeft evaluate --run` evaluates it like any other run.
A repair is one pass of seconds to minutes with no checkpoint: an interrupted one starts again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safeft.config import Config, option
from safeft.data.sources import training_rows
from safeft.data.templates import TEMPLATES
from safeft.data.tokenize import PaddingCollator, encode
from safeft.errors import SafeftError
from safeft.io import write_json
from safeft.models import load_model, load_weights_chain
from safeft.repair import REPAIRS, get_repair
from safeft.repair.base import PEFT_PREFIX, RepairInputs
from safeft.stages.runs import PeakMemory, RunDir, stage_run
from safeft.stages.stage_config import MethodStageConfig
from safeft.stages.training import save_weights

log = logging.getLogger("safeft")

# One section per repair method in the YAML file and on the command line (`--safelora.num-proj-layers 5`).
RepairOptions = dataclasses.make_dataclass(
    "RepairOptions",
    [
        (name, spec.config_cls, dataclasses.field(default_factory=spec.config_cls))
        for name, spec in REPAIRS.items()
    ],
    bases=(Config,),
)
RepairOptions.__doc__ = "Hyper-parameters of each repair method (only the chosen method's section is used)"


@dataclass
class RepairConfig(MethodStageConfig):
    """Repair stage (post-fine-tuning defense)"""

    output: str = option(None, "run directory to write", fingerprint=False)
    method: str = option("safelora", "repair method", choices=tuple(REPAIRS))
    max_length: int = option(256, "tokens per calibration row after truncation", range=(8, None))
    template: str = option("alpaca", "prompt template of the calibration rows", choices=TEMPLATES)
    methods: RepairOptions = dataclasses.field(default_factory=RepairOptions)  # type: ignore[valid-type]
    run: str = option(None, "fine-tuning run directory to repair")

    def check(self) -> list[str]:
        problems = super().check()
        if not self.run:
            problems.append("run: required (the fine-tuning run directory to repair)")
        return problems


def _finished(path: str | Path, what: str, stage: str = "finetune") -> RunDir:
    run = RunDir.open(path, stages=(stage,))
    if run.manifest.get("status") != "done":
        raise SafeftError(
            f"{what} {run.path} is not finished (status {run.manifest.get('status')!r}); finish it first"
        )
    return run


def _inputs(cfg: RepairConfig, finetune: RunDir, tokenizer: Any, model: Any) -> RepairInputs:
    def load(name: str) -> tuple[Any, Any]:
        return load_model(name, cache=cfg.cache_dir)

    def alignment_models() -> tuple[Any, Any]:
        """(aligned, unaligned) of the pipeline: the alignment run's merged weights and its base model."""
        parent = finetune.manifest.get("parent")
        if not parent:
            raise SafeftError(
                f"SafeLoRA needs the alignment's weight change, but {finetune.path} fine-tuned a bare model "
                "(no alignment run); give --methods.safelora.aligned-model and --methods.safelora.unaligned-model"
            )
        align = _finished(parent, "alignment run", "align")
        base = align.manifest["base_model"]
        aligned, _ = load_weights_chain(
            base, align.manifest.get("weights", []), cache=cfg.cache_dir, merge_last=True
        )
        unaligned, _ = load(base)
        return aligned, unaligned

    def calibration_batches(source: str, n: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        rows = training_rows(source, n, "calibration rows", cfg.data_dir)
        encoded = [encode(r, tokenizer, cfg.max_length, template=cfg.template) for r in rows]
        collate = PaddingCollator(tokenizer.pad_token_id)
        device = next(model.parameters()).device
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size])
            yield {k: v.to(device) for k, v in batch.items()}

    fan_in_fan_out = {
        name.removeprefix(PEFT_PREFIX)
        for name, module in model.named_modules()
        if getattr(module, "fan_in_fan_out", False)
    }
    return RepairInputs(load, alignment_models, calibration_batches, fan_in_fan_out)


def run_repair(cfg: RepairConfig, *, overwrite: bool = False) -> RunDir:
    """Repair the fine-tuning run `cfg.run` into `cfg.output`; `overwrite` replaces a repair already there."""
    spec = get_repair(cfg.method)
    finetune = _finished(cfg.run, "fine-tuning run")
    chain = finetune.manifest.get("weights", [])
    if not chain or chain[-1]["kind"] != "adapter":
        raise SafeftError(
            f"{finetune.path} saved no LoRA adapter (a full fine-tune): {cfg.method} repairs a LoRA fine-tune"
        )
    with stage_run(
        cfg.output,
        "repair",
        cfg,
        overwrite=overwrite,
        method=cfg.method,
        base_model=finetune.manifest["base_model"],
        parent=str(finetune.path.resolve()),
        alignment_method=finetune.manifest.get("alignment_method"),
    ) as run:
        if run.reused:
            log.info("repair run %s is already done; reusing it", run.path)
            return run
        t0 = time.perf_counter()
        # Earlier adapters merged, the fine-tuning adapter live: the matrices the methods edit.
        model, tok = load_weights_chain(finetune.manifest["base_model"], chain, cache=cfg.cache_dir)
        with PeakMemory() as mem:
            details = spec.repair(model, cfg.method_config, _inputs(cfg, finetune, tok, model))
        weights = save_weights(model, run)
        metrics = {
            "stage": "repair",
            "method": cfg.method,
            **details,
            **mem.as_dict(),
            "wall_time_s": round(time.perf_counter() - t0, 2),
        }
        write_json(run.path / "metrics.json", metrics)
        run.write_manifest(
            status="done",
            weights=chain[:-1] + [{"kind": weights, "path": str(run.final(weights))}],
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
    return run
