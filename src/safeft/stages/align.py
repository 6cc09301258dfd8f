"""`safeft align`: the provider's alignment stage, with a defense or plain SFT."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from safeft.config import option
from safeft.data.sources import training_rows
from safeft.errors import SafeftError
from safeft.methods import get_method, method_names
from safeft.models import attach_lora, load_model
from safeft.stages.runs import RunDir, stage_run
from safeft.stages.training import TrainingStageConfig, train_and_save

log = logging.getLogger("safeft")

ALIGN_METHODS = method_names("align")


@dataclass
class AlignConfig(TrainingStageConfig):
    """Alignment stage"""

    method: str = option("sft", "alignment method", choices=ALIGN_METHODS)
    model: str = option("smollm2-135m", "short name (see 'safeft models'), local folder or Hub id")
    alignment_data: str = option(
        "refusals", "alignment rows (harmful prompt -> refusal): source name or file"
    )
    alignment_samples: int = option(1000, "alignment rows to use (the first N)", range=(1, None))
    harmful_data: str = option(
        "harmful-pool", "harmful QA pool for Booster / RepNoise / T-Vaccine's probe: source name or file"
    )
    harmful_samples: int = option(1000, "harmful rows to use (the first N)", range=(1, None))


def run_align(cfg: AlignConfig) -> RunDir:
    spec = get_method(cfg.method)
    run = RunDir(Path(cfg.output))
    if run.is_done_for(cfg):
        log.info("alignment run %s is already done; reusing it", run.path)
        return RunDir.open(run.path)
    with stage_run(cfg.output, "align", cfg, method=cfg.method, base_model=cfg.model, parent=None) as run:
        started = time.perf_counter()
        model, tok = load_model(cfg.model, cache=cfg.cache_dir)
        alignment = training_rows(cfg.alignment_data, cfg.alignment_samples, "alignment rows", cfg.data_dir)
        harmful = (
            training_rows(cfg.harmful_data, cfg.harmful_samples, "harmful rows", cfg.data_dir)
            if spec.needs_harmful
            else None
        )
        model = attach_lora(model, cfg.lora)
        train_and_save(
            run,
            cfg,
            model,
            tok,
            alignment,
            started=started,
            weights_before=[],
            metrics={},
            harmful_rows=harmful,
        )
    if not run.is_done():
        raise SafeftError(f"alignment run {run.path} did not finish")
    return run
