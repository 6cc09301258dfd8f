"""What the align and finetune stages share: their common settings, Trainer arguments, resumable
training, and the train -> save -> metrics -> manifest block both end with."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from safeft.config import Config, option
from safeft.data.tokenize import PaddingCollator, encode
from safeft.errors import SafeftError
from safeft.hardware import use_bf16
from safeft.io import write_json
from safeft.methods import METHODS, get_method
from safeft.methods.hooks import CHECKPOINTING
from safeft.methods.loss import OUTPUT_LAYER_PATHS, LossPath
from safeft.models import LoraSettings
from safeft.stages.runs import PeakMemory, RunDir
from safeft.stages.stage_config import MethodStageConfig

log = logging.getLogger("safeft")


@dataclass
class TrainSettings(Config):
    """Optimisation (AdamW)"""

    learning_rate: float = option(5e-4, "AdamW learning rate", range=(0, 1))
    epochs: float = option(1.0, "passes over the training rows (ignored when max_steps > 0)", range=(0, None))
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: run all epochs)", range=(-1, None))
    batch_size: int = option(10, "rows per micro-batch per process", range=(1, None))
    gradient_accumulation: int = option(1, "micro-batches per optimizer step", range=(1, None))
    weight_decay: float = option(0.1, "AdamW weight decay", range=(0, None))
    warmup_ratio: float = option(0.0, "fraction of steps with linear learning-rate warm-up", range=(0, 1))
    scheduler: str = option(
        "constant", "learning-rate schedule", choices=("constant", "linear", "cosine", "constant_with_warmup")
    )
    bf16: bool = option(
        False,
        "bf16 autocast, weights stay fp32; on a machine without native bf16 (an AVX2-only CPU) fp32 is used "
        "instead, with a warning (safeft.hardware)",
    )
    seed: int = option(42, "seed of initialisation, shuffling and sampling", range=(0, None))
    # The loss's time/memory trade (safeft.methods.loss). The defaults leave the fingerprint as it
    # was before these settings existed: the two paths compute the same loss.
    output_layer: str = option(
        "auto",
        "the loss's output layer: 'full' logits (fastest when most positions are response tokens), 'deferred' "
        "to the response tokens and recomputed in backward (least memory), or 'auto': the one with less "
        "output-layer work unless the full logits exceed memory_budget_mib (the choice is logged and in manifest.json)",
        choices=OUTPUT_LAYER_PATHS,
        fingerprint=lambda value: value != "auto",
    )
    memory_budget_mib: float | None = option(
        None,
        "auto: the most MiB the full logits of one micro-batch may take (none: no limit, the faster path); "
        "set, it also says memory is the limit (checkpointing auto: on)",
        range=(0, None),
        fingerprint=lambda value: value is not None,
    )
    loss_chunk_tokens: int = option(
        0,
        "deferred output layer: response tokens per chunk (0: 32 MiB of fp32 logits, 170 for SmolLM2)",
        range=(0, None),
        fingerprint=lambda value: value != 0,
    )
    # Recomputing a forward gives the same numbers: not part of the fingerprint.
    checkpointing: str = option(
        "auto",
        "activation checkpointing of the deferred output layer's chunks and of the blocks a method runs but does "
        "not train (T-Vaccine's undrawn blocks): 'on' keeps less memory (their forward is recomputed in backward), "
        "'off' is faster, 'auto': off unless memory_budget_mib is set (the choice is logged and in manifest.json)",
        choices=CHECKPOINTING,
        fingerprint=False,
    )
    logging_steps: int = option(
        1, "log loss and method metrics every N steps", range=(1, None), fingerprint=False
    )
    save_steps: int = option(
        50, "write a resumable checkpoint every N steps", range=(1, None), fingerprint=False
    )
    progress: bool = option(True, "show a progress bar with ETA", fingerprint=False)

    @property
    def loss_path(self) -> LossPath:
        return LossPath(self.output_layer, self.memory_budget_mib, self.loss_chunk_tokens)

    def check(self) -> list[str]:
        problems = []
        if self.max_steps == 0:
            problems.append("max_steps: got 0, expected -1 (run all epochs) or at least 1 step")
        if self.max_steps == -1 and self.epochs == 0:
            problems.append("epochs: got 0 with max_steps -1, expected a positive number of passes")
        return problems


# One section per method in the YAML file and on the command line (`--methods.booster.harmful-weight 5`).
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
class TrainingStageConfig(MethodStageConfig):
    """What the align and finetune stage configs share (each subclass sets `method`'s choices and `train`'s defaults)"""

    method: str = option("sft", "training method")
    methods: MethodOptions = dataclasses.field(default_factory=MethodOptions)  # type: ignore[valid-type]
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)


def encode_rows(records: list, tokenizer: Any, max_length: int, template: str) -> list[dict[str, list[int]]]:
    return [encode(r, tokenizer, max_length, template=template) for r in records]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before a stage builds anything.

    Trainer seeds only in its constructor, after the model and the LoRA adapter exist; the adapter's
    initialisation (and anything else drawn before) would otherwise depend on whatever ran earlier in
    the process. Called first thing in every training stage, so a stage's result is a function of
    its config alone, whichever other stages ran (or were cached) before it in the same process.
    """
    from transformers import set_seed

    set_seed(seed)


def training_arguments(settings: TrainSettings, run: RunDir, **extra: Any) -> TrainingArguments:
    scheduler = settings.scheduler
    if scheduler == "constant" and settings.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    return TrainingArguments(
        output_dir=str(run.path / "checkpoints"),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type=scheduler,
        bf16=use_bf16(settings.bf16, "training"),
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=not settings.progress,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # DDP: T-Vaccine freezes the undrawn blocks and multi-pass methods run extra passes, so some
        # parameters get no gradient in a backward; DDP must look for them instead of waiting forever.
        ddp_find_unused_parameters=True,
        **extra,
    )


class HistoryCallback(TrainerCallback):
    """Keeps every logged record (loss and each method's own quantities) and the step times."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.step_times.append(time.perf_counter() - self._t)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs:
            self.history.append({"step": state.global_step, **logs})
            if state.is_world_process_zero:
                log.info(
                    "step %d: %s",
                    state.global_step,
                    {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()},
                )


def check_parallelism(trainer: Any, method: str) -> None:
    """Refuse methods whose computation would silently change under FSDP or DeepSpeed.

    Under FSDP and DeepSpeed each process holds a shard of the parameters and gradients (or
    DeepSpeed's engine owns them), so a method that reads or edits `.grad` itself (a custom
    `training_step`: Vaccine, T-Vaccine, Booster) or reads the parameters outside the forward pass
    (Lisa's proximal anchor) would work on shards. Methods that only change the loss and leave the
    step to Trainer (SFT, RepNoise) are fine. A trainer class can state its support explicitly with
    the attribute `supports_sharded_parameters`. Plain DDP supports every method.
    """
    from transformers import Trainer

    sharded = (
        "FSDP"
        if getattr(trainer, "is_fsdp_enabled", False)
        else "DeepSpeed"
        if getattr(trainer, "is_deepspeed_enabled", False)
        else None
    )
    if sharded is None:
        return
    cls = type(trainer)
    supported = getattr(cls, "supports_sharded_parameters", cls.training_step is Trainer.training_step)
    if not supported:
        raise SafeftError(
            f"method {method!r} is not supported under {sharded}: it works on whole parameter gradients "
            f"(norms, simulated steps, perturbations), which {sharded} shards across processes. "
            "Run it with plain data parallelism instead (safeft ... --num-processes N, or "
            "configs/accelerate/8gpu-ddp.yaml); FSDP/DeepSpeed support sft and repnoise. See docs/distributed.md."
        )


class ProgressBarOnly(ProgressCallback):
    """Trainer's progress bar without its printed copy of every log record: `HistoryCallback`
    already logs each record once (to the terminal and log.txt)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        pass


def _log_each_record_once(trainer: Any) -> None:
    trainer.pop_callback(PrinterCallback)  # what Trainer prints with when the progress bar is off
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBarOnly)


def train_resumably(trainer: Any, run: RunDir, history: HistoryCallback) -> dict[str, Any]:
    """Train, resuming from the newest complete checkpoint if an earlier attempt was interrupted."""
    check_parallelism(trainer, str(run.manifest.get("method", type(trainer).__name__)))
    _log_each_record_once(trainer)
    checkpoint = run.latest_checkpoint()
    if trainer.accelerator.num_processes > 1:
        # Every rank must resume from the same checkpoint: rank 0's view of the folder decides.
        from accelerate.utils import broadcast_object_list

        checkpoint = broadcast_object_list([checkpoint])[0]
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    # Steps that ran in this process; the first few include warm-up, the median is what we report.
    times = sorted(history.step_times)
    return {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_wall_time_s": round(wall, 2),
        "seconds_per_step_median": round(times[len(times) // 2], 4) if times else None,
        "resumed_from": checkpoint,
        "num_processes": trainer.accelerator.num_processes,
        "log_history": history.history,
    }


def remove_checkpoints(run: RunDir) -> None:
    shutil.rmtree(run.path / "checkpoints", ignore_errors=True)


def train_and_save(
    run: RunDir,
    cfg: TrainingStageConfig,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    *,
    started: float,
    weights_before: list[dict[str, str]],
    metrics: dict[str, Any],
    harmful_rows: list[dict[str, Any]] | None = None,
    alignment_rows: list[dict[str, Any]] | None = None,
) -> None:
    """Train `cfg.method` on encoded `train_rows` (resuming if interrupted), then save the weights,
    metrics.json and the finished manifest, whose weights chain is `weights_before` plus these weights."""
    history = HistoryCallback()
    trainer = get_method(cfg.method).trainer_cls(
        model=model,
        args=training_arguments(cfg.train, run),
        train_dataset=train_rows,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        method_config=cfg.method_config,
        harmful_dataset=harmful_rows,
        alignment_dataset=alignment_rows,
        callbacks=[history],
        loss_path=cfg.train.loss_path,
        checkpointing=cfg.train.checkpointing,
    )
    with PeakMemory() as mem:
        stats = train_resumably(trainer, run, history)
    if trainer.is_world_process_zero():
        weights = save_weights(trainer.model, run)
        metrics = {
            "stage": run.manifest["stage"],
            "method": cfg.method,
            **metrics,
            **stats,
            **mem.as_dict(),
            "loss_path": trainer.loss_path.as_dict(),
            "checkpointing": trainer.checkpointing.as_dict(),
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        write_json(run.path / "metrics.json", metrics)
        run.write_manifest(
            status="done",
            loss_path=trainer.loss_path.as_dict(),
            checkpointing=trainer.checkpointing.as_dict(),
            weights=[*weights_before, {"kind": weights, "path": str(run.final(weights))}],
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        remove_checkpoints(run)
    trainer.accelerator.wait_for_everyone()


def save_weights(model: Any, run: RunDir) -> str:
    """Adapter in PEFT format (`adapter/`) or full weights as safetensors (`model/`); returns the folder name."""
    from peft import PeftModel

    from safeft.io import atomic_dir, read_json, write_json

    name = "adapter" if isinstance(model, PeftModel) else "model"
    with atomic_dir(Path(run.path) / name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config_file = tmp / "adapter_config.json"
        if config_file.is_file():
            # PEFT writes target_modules from a set, in string-hash order (it changes from process to
            # process): sorted, the same adapter is the same bytes.
            config = read_json(config_file)
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
            write_json(config_file, config)
    return name
