"""`safeft align`: the provider's alignment stage, with a defense or plain SFT."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from safeft.config import option
from safeft.data.sources import load_source, pair_by_prompt, training_rows, with_responses
from safeft.errors import SafeftError
from safeft.methods import get_method, method_names
from safeft.models import attach_lora, load_model
from safeft.stages.runs import RunDir, stage_run
from safeft.stages.training import TrainingStageConfig, encode_rows, seed_everything, train_and_save

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
    harmful_samples: int = option(
        1000, "harmful rows to use (the first N; with pair_by_prompt, the partners instead)", range=(1, None)
    )
    pair_by_prompt: bool = option(
        False,
        "join alignment and harmful rows by prompt: harmful row i is alignment row i's partner (same prompt), "
        "as the references pair them (Booster's pools; RepNoise's masks with harmful_rows=partners); "
        "every alignment prompt needs one (e.g. pku-paired-safe with pku-paired-unsafe)",
    )


def harmful_records(cfg: AlignConfig, alignment: list) -> list:
    """The harmful rows: the first `harmful_samples`, or with `pair_by_prompt` each alignment row's partner."""
    if not cfg.pair_by_prompt:
        return training_rows(cfg.harmful_data, cfg.harmful_samples, "harmful rows", cfg.data_dir)
    pool = load_source(cfg.harmful_data, data_dir=cfg.data_dir)
    return with_responses(pair_by_prompt(alignment, pool), "harmful rows")


def run_align(cfg: AlignConfig, *, overwrite: bool = False) -> RunDir:
    """Align `cfg.model` into the run folder `cfg.output`; `overwrite` replaces a run already there."""
    spec = get_method(cfg.method)
    with stage_run(
        cfg.output, "align", cfg, overwrite=overwrite, method=cfg.method, base_model=cfg.model, parent=None
    ) as run:
        if run.reused:
            log.info("alignment run %s is already done; reusing it", run.path)
            return run
        started = time.perf_counter()
        seed_everything(cfg.train.seed)  # before the model and its adapter are built
        model, tok = load_model(cfg.model, cache=cfg.cache_dir)
        alignment = training_rows(cfg.alignment_data, cfg.alignment_samples, "alignment rows", cfg.data_dir)
        harmful_ds = None
        if spec.needs_harmful:
            harmful_ds = encode_rows(harmful_records(cfg, alignment), tok, cfg.max_length, cfg.template)
        train_rows = encode_rows(alignment, tok, cfg.max_length, cfg.template)
        if cfg.pair_by_prompt:
            for i, row in enumerate(train_rows):
                row["pair_index"] = i  # the collator carries it: RepNoise finds the partner row

        model = attach_lora(model, cfg.lora)
        train_and_save(
            run,
            cfg,
            model,
            tok,
            train_rows,
            started=started,
            weights_before=[],
            metrics={},
            harmful_rows=harmful_ds,
        )
    if not run.is_done():
        raise SafeftError(f"alignment run {run.path} did not finish")
    return run
