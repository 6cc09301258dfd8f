"""`safeft finetune`: the user's fine-tuning on a poisoned mix — the attack every defense faces."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from safeft.config import option
from safeft.data.mix import build_poisoned_mix
from safeft.data.sources import load_source, training_rows, with_responses
from safeft.data.tasks import TASKS, get_task
from safeft.errors import SafeftError
from safeft.io import write_jsonl
from safeft.methods import METHODS, get_method, method_names
from safeft.models import attach_lora, load_weights_chain
from safeft.stages.runs import RunDir, is_main_process, stage_run
from safeft.stages.training import (
    TrainingStageConfig,
    TrainSettings,
    encode_rows,
    seed_everything,
    train_and_save,
)

log = logging.getLogger("safeft")

FINETUNE_METHODS = method_names("finetune")


def _attack_defaults() -> TrainSettings:
    # Reference attack: lr 1e-5, batch 10, weight decay 0.1, warm-up 0.1, 20 epochs (scaled down by default).
    return TrainSettings(
        learning_rate=1e-5, epochs=1.0, batch_size=10, weight_decay=0.1, warmup_ratio=0.1, scheduler="linear"
    )


@dataclass
class FinetuneConfig(TrainingStageConfig):
    """Fine-tuning stage (the harmful fine-tuning attack)"""

    from_run: str | None = option(
        None, "alignment run directory to start from (omit and give --model for the non-aligned baseline)"
    )
    model: str | None = option(None, "bare model to attack when there is no alignment run")
    method: str = option(
        "sft", "fine-tuning method: plain SFT, or a fine-tuning-stage defense", choices=FINETUNE_METHODS
    )
    task: str = option("sst2", "benign task of the user's data", choices=tuple(TASKS))
    task_data: str | None = option(
        None, "benign rows: source name or file (default: the task's training split)"
    )
    samples: int = option(1000, "rows in the poisoned mix, n", range=(1, None))
    poison_ratio: float = option(
        0.1, "fraction of harmful rows, p (exactly round(p*n) harmful rows)", range=(0.0, 1.0)
    )
    harmful_data: str = option("beavertails-attack", "harmful QA rows of the attack: source name or file")
    eval_prompts: str = option("beavertails-eval", "evaluation prompts the harmful rows must not overlap")
    exclude_overlaps: bool = option(
        True, "skip harmful rows whose prompt is an evaluation prompt or in the alignment harmful pool"
    )
    strict: bool = option(
        False, "refuse to run when harmful rows overlap evaluation prompts or the alignment pool"
    )
    adapter: str = option(
        "auto",
        "continue: keep training the alignment adapter; new: merge it and train a fresh LoRA; auto: what the alignment method's paper does",
        choices=("auto", "continue", "new"),
    )
    alignment_data: str = option(
        "refusals", "alignment rows for fine-tuning-stage defenses that need them (Lisa)"
    )
    alignment_samples: int = option(1000, "alignment rows for those defenses", range=(1, None))
    defense_harmful_data: str = option(
        "harmful-pool",
        "the provider's harmful QA rows for fine-tuning-stage defenses that need them (Panacea); "
        "the attack's harmful rows must not overlap them",
    )
    defense_harmful_samples: int = option(
        1000, "defense harmful rows (Panacea's reference: 1,000)", range=(1, None)
    )
    train: TrainSettings = dataclasses.field(default_factory=_attack_defaults)

    def check(self) -> list[str]:
        problems = super().check()
        if bool(self.from_run) == bool(self.model):
            problems.append(
                f"from_run / model: give exactly one (got from_run={self.from_run!r}, model={self.model!r})"
            )
        return problems


def resolve_parent(cfg: FinetuneConfig) -> tuple[str, list[dict[str, str]], str, RunDir | None]:
    """(base model, weights chain, adapter mode, parent manifest) of what the attack starts from."""
    if cfg.model:
        return cfg.model, [], "new", None
    parent = RunDir.open(cfg.from_run, stages=("align", "finetune"))  # type: ignore[arg-type]
    if parent.manifest.get("status") != "done":
        raise SafeftError(
            f"alignment run {parent.path} is not finished (status {parent.manifest.get('status')!r}); rerun 'safeft align' on it first"
        )
    mode = cfg.adapter
    if mode == "auto":
        method = parent.manifest.get("method", "sft")
        mode = METHODS[method].finetune_adapter if method in METHODS else "new"
    return parent.manifest["base_model"], parent.manifest.get("weights", []), mode, parent


def _alignment_harmful_pool(parent: RunDir | None, data_dir: str | None) -> list:
    """The harmful rows the alignment-stage defense saw: the attack's rows must be disjoint from them."""
    method = parent.manifest.get("method", "") if parent else ""
    if method not in METHODS or not METHODS[method].needs_harmful:
        return []
    from safeft.config import read_yaml

    align_cfg = read_yaml(parent.path / "config.yaml")  # type: ignore[union-attr]
    return load_source(align_cfg["harmful_data"], data_dir=data_dir)[: align_cfg["harmful_samples"]]


def run_finetune(cfg: FinetuneConfig, *, overwrite: bool = False) -> RunDir:
    """Fine-tune (attack) into the run folder `cfg.output`; `overwrite` replaces a run already there."""
    spec = get_method(cfg.method)
    run = RunDir(Path(cfg.output))
    if not overwrite and run.is_done_for(cfg):
        log.info("fine-tuning run %s is already done; reusing it", run.path)
        return RunDir.open(run.path)
    base, chain, mode, parent = resolve_parent(cfg)
    if mode == "continue" and (not chain or chain[-1]["kind"] != "adapter"):
        raise SafeftError(
            f"--adapter continue needs an alignment run that saved a LoRA adapter; {cfg.from_run or cfg.model} has none. Use --adapter new."
        )
    with stage_run(
        cfg.output,
        "finetune",
        cfg,
        overwrite=overwrite,
        method=cfg.method,
        base_model=base,
        parent=str(Path(cfg.from_run).resolve()) if cfg.from_run else None,
        adapter_mode=mode,
        alignment_method=parent.manifest.get("method") if parent else None,
    ) as run:
        if run.reused:
            return run
        started = time.perf_counter()
        seed_everything(cfg.train.seed)  # before the model and its adapter are built
        task = get_task(cfg.task)
        benign = task.load_train(cfg.task_data, data_dir=cfg.data_dir)
        harmful = with_responses(
            load_source(cfg.harmful_data, data_dir=cfg.data_dir), "harmful rows of the attack"
        )
        eval_prompts = load_source(cfg.eval_prompts, data_dir=cfg.data_dir)
        alignment_harmful = _alignment_harmful_pool(parent, cfg.data_dir)
        defense_harmful = (
            training_rows(
                cfg.defense_harmful_data, cfg.defense_harmful_samples, "defense harmful rows", cfg.data_dir
            )
            if spec.needs_harmful
            else []
        )
        mix, report = build_poisoned_mix(
            benign,
            harmful,
            cfg.samples,
            cfg.poison_ratio,
            cfg.train.seed,
            eval_prompts=eval_prompts,
            alignment_harmful=alignment_harmful + defense_harmful,
            strict=cfg.strict,
            exclude_overlaps=cfg.exclude_overlaps,
        )
        if is_main_process():
            write_jsonl(
                run.path / "mix.jsonl",
                [
                    {
                        "instruction": r.instruction,
                        "input": r.input,
                        "output": r.output,
                        **{k: v for k, v in r.meta.items() if k in ("source", "row", "is_safe")},
                    }
                    for r in mix
                ],
            )
        # continue: the alignment adapter stays live and trains; new: it is merged into the base
        # weights first, and a fresh adapter (B = 0) is attached to the merged model.
        model, tok = load_weights_chain(
            base, chain, cache=cfg.cache_dir, trainable_last=(mode == "continue"), merge_last=(mode == "new")
        )
        if mode == "new":
            model = attach_lora(model, cfg.lora)
        alignment_ds = None
        if spec.needs_alignment:
            alignment = training_rows(
                cfg.alignment_data, cfg.alignment_samples, f"{cfg.method}'s alignment rows", cfg.data_dir
            )
            alignment_ds = encode_rows(alignment, tok, cfg.max_length, cfg.template)
        harmful_ds = (
            encode_rows(defense_harmful, tok, cfg.max_length, cfg.template) if defense_harmful else None
        )
        train_and_save(
            run,
            cfg,
            model,
            tok,
            encode_rows(mix, tok, cfg.max_length, cfg.template),
            started=started,
            # continue: the trained adapter replaces the alignment adapter it started from
            weights_before=chain[:-1] if mode == "continue" else chain,
            metrics={"adapter_mode": mode, "mix": report.as_dict()},
            alignment_rows=alignment_ds,
            harmful_rows=harmful_ds,
        )
    return RunDir.open(run.path)
