"""`safeft align`: the provider's alignment stage, with a defense or plain SFT."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from safeft.config import Config, option
from safeft.data.sources import load_source, pair_by_prompt, training_rows, with_responses
from safeft.data.templates import TEMPLATES
from safeft.data.tokenize import PaddingCollator, encode
from safeft.errors import SafeftError
from safeft.io import write_json
from safeft.methods import METHODS, get_method
from safeft.models import LoraSettings, attach_lora, load_model
from safeft.stages.runs import PeakMemory, RunDir, stage_run
from safeft.stages.training import (
    HistoryCallback,
    TrainSettings,
    remove_checkpoints,
    save_weights,
    seed_everything,
    train_resumably,
    training_arguments,
)

log = logging.getLogger("safeft")

ALIGN_METHODS = tuple(name for name, spec in METHODS.items() if spec.stage == "align")

# One section per method in the YAML file and on the command line (`--booster.harmful-weight 5`).
MethodOptions = dataclasses.make_dataclass(
    "MethodOptions",
    [
        (name.replace("-", "_"), spec.config_cls, dataclasses.field(default_factory=spec.config_cls))
        for name, spec in METHODS.items()
    ],
    bases=(Config,),
)
MethodOptions.__doc__ = "Hyper-parameters of each method (only the chosen method's section is used)"


@dataclass
class AlignConfig(Config):
    """Alignment stage"""

    output: str = option(None, "run directory to write (created; an unfinished run there is resumed)")
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
    data_dir: str | None = option(
        None, "folder with the local data files (default: $SAFEFT_DATA_DIR, then the Hub)"
    )
    max_length: int = option(256, "tokens per row after truncation", range=(8, None))
    template: str = option("alpaca", "prompt template", choices=TEMPLATES)
    cache_dir: str | None = option(None, "model cache (default: $SAFEFT_CACHE or ~/.cache/safeft)")
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    methods: MethodOptions = dataclasses.field(default_factory=MethodOptions)  # type: ignore[valid-type]

    def check(self) -> list[str]:
        return [] if self.output else ["output: required (the run directory to write)"]

    @property
    def method_config(self) -> Any:
        return getattr(self.methods, self.method.replace("-", "_"))


def encode_rows(records: list, tokenizer: Any, max_length: int, template: str) -> list[dict[str, list[int]]]:
    return [encode(r, tokenizer, max_length, template=template) for r in records]


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
        t0 = time.perf_counter()
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
        history = HistoryCallback()
        trainer = spec.trainer_cls(
            model=model,
            args=training_arguments(cfg.train, run),
            train_dataset=train_rows,
            data_collator=PaddingCollator(tok.pad_token_id),
            method_config=cfg.method_config,
            harmful_dataset=harmful_ds,
            callbacks=[history],
        )
        with PeakMemory() as mem:
            stats = train_resumably(trainer, run, history)
        if trainer.is_world_process_zero():
            weights = save_weights(trainer.model, run)
            metrics = {
                "stage": "align",
                "method": cfg.method,
                **stats,
                **mem.as_dict(),
                "wall_time_s": round(time.perf_counter() - t0, 2),
            }
            write_json(run.path / "metrics.json", metrics)
            run.write_manifest(
                status="done",
                weights=[{"kind": weights, "path": str(run.final(weights))}],
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )
            remove_checkpoints(run)
        trainer.accelerator.wait_for_everyone()
    if not run.is_done():
        raise SafeftError(f"alignment run {run.path} did not finish")
    return run
