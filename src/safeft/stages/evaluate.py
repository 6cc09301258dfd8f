"""`safeft evaluate`: harmful score on harmful prompts and fine-tune accuracy on a task."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from safeft.config import Config, option
from safeft.data.leaks import compare, report_leaks
from safeft.data.records import Record
from safeft.data.sources import load_source, take
from safeft.data.tasks import TASKS, get_task
from safeft.data.templates import TEMPLATES
from safeft.errors import SafeftError
from safeft.evaluation.distributed import distributed_state
from safeft.evaluation.evaluate import evaluate_model
from safeft.evaluation.judges import JUDGES, get_judge
from safeft.io import write_json, write_jsonl
from safeft.models import load_model, load_weights_chain
from safeft.stages.runs import RunDir, package_versions, stage_run

log = logging.getLogger("safeft")


@dataclass
class EvaluateConfig(Config):
    """Evaluation stage"""

    output: str = option(None, "folder for metrics.json and the per-sample JSONL files", fingerprint=False)
    run: str | None = option(None, "run directory (align or finetune) whose model to evaluate")
    model: str | None = option(None, "bare model to evaluate instead of a run")
    judge: str = option("cpu", "harmfulness judge", choices=tuple(JUDGES))
    harmful_prompts: str = option("beavertails-eval", "harmful prompt set: source name or file")
    limit: int = option(1000, "harmful prompts to evaluate (the first N)", range=(0, None))
    task: str | None = option(None, "task for fine-tune accuracy (omit to skip)", choices=(None, *TASKS))
    task_data: str | None = option(
        None, "task evaluation rows: source name or file (default: the task's evaluation split)"
    )
    task_limit: int = option(1000, "task rows to score (the first N)", range=(0, None))
    max_new_tokens: int = option(
        128, "tokens generated per harmful prompt (reference: 128-512)", range=(1, None)
    )
    task_max_new_tokens: int = option(
        16, "tokens generated per task prompt (GSM8K needs ~256)", range=(1, None)
    )
    batch_size: int = option(16, "prompts generated together", range=(1, None))
    dtype: str = option(
        "float32",
        "weights' precision for generation (weights are loaded and adapters merged in float32 first); "
        "bfloat16 is ~2x faster on CPUs with AMX/AVX-512 bf16 and is what the references use on GPUs",
        choices=("float32", "bfloat16", "float16"),
    )
    template: str = option("alpaca", "prompt template", choices=TEMPLATES)
    data_dir: str | None = option(
        None,
        "folder with the local data files (default: $SAFEFT_DATA_DIR, then the Hub)",
        fingerprint=False,
    )
    cache_dir: str | None = option(
        None, "model cache (default: $SAFEFT_CACHE or ~/.cache/safeft)", fingerprint=False
    )

    def check(self) -> list[str]:
        problems = [] if self.output else ["output: required (the folder to write)"]
        if bool(self.run) == bool(self.model):
            problems.append(f"run / model: give exactly one (got run={self.run!r}, model={self.model!r})")
        return problems


def trained_rows(run: RunDir, data_dir: str | None) -> list[tuple[str, Callable[[], list]]]:
    """(description, loader) of every set of rows the model of `run` was trained on, back to its alignment."""
    from safeft.config import read_yaml
    from safeft.data.sources import read_rows

    out: list[tuple[str, Callable[[], list]]] = []
    seen: set[Path] = set()
    current: RunDir | None = run
    while current is not None and current.path.resolve() not in seen:
        seen.add(current.path.resolve())
        config = read_yaml(current.path / "config.yaml")
        where = config.get("data_dir") or data_dir
        stage = current.manifest.get("stage")
        if stage == "finetune":
            mix = current.path / "mix.jsonl"
            out.append(
                (
                    f"attack rows of {current.path}",
                    lambda mix=mix: [
                        Record(r["instruction"], r.get("input", ""), r["output"]) for _, r in read_rows(mix)
                    ],
                )
            )
        if stage == "align" or (stage == "finetune" and config.get("method") == "lisa"):
            source, n = config["alignment_data"], config["alignment_samples"]
            out.append(
                (
                    f"alignment rows of {current.path}",
                    lambda s=source, n=n, d=where: load_source(s, data_dir=d)[:n],
                )
            )
        parent = current.manifest.get("parent")
        current = RunDir.open(parent) if parent and (Path(parent) / "manifest.json").is_file() else None
    return out


def run_evaluate(cfg: EvaluateConfig, *, overwrite: bool = False, strict: bool = False) -> RunDir:
    """Evaluate a run's model (or a bare model) into `cfg.output`; `overwrite` replaces an evaluation there.

    `strict` refuses to score rows the model was trained on (see `safeft.data.leaks`).
    """
    out = RunDir(Path(cfg.output))
    if not overwrite and out.is_done_for(cfg):
        log.info("evaluation %s is already done; reusing it", out.path)
        return RunDir.open(out.path)
    parent = RunDir.open(cfg.run, stages=("align", "finetune")) if cfg.run else None
    if parent and parent.manifest.get("status") != "done":
        raise SafeftError(f"run {parent.path} is not finished (status {parent.manifest.get('status')!r})")
    with stage_run(
        cfg.output,
        "evaluate",
        cfg,
        overwrite=overwrite,
        parent=str(parent.path.resolve()) if parent else None,
        base_model=parent.manifest["base_model"] if parent else cfg.model,
    ) as out:
        if out.reused:
            return out
        t0 = time.perf_counter()
        if parent:
            model, tok = load_weights_chain(
                parent.manifest["base_model"],
                parent.manifest.get("weights", []),
                cache=cfg.cache_dir,
                merge_last=True,
            )
        else:
            model, tok = load_model(cfg.model, cache=cfg.cache_dir)  # type: ignore[arg-type]
        prompts = (
            take(
                load_source(cfg.harmful_prompts, data_dir=cfg.data_dir),
                cfg.limit,
                f"harmful prompts from {cfg.harmful_prompts}",
            )
            if cfg.limit
            else []
        )
        task_records = None
        if cfg.task:
            task_records = get_task(cfg.task).load_eval(cfg.task_data, data_dir=cfg.data_dir)[
                : cfg.task_limit
            ]
        leaks = []
        for trained, load in trained_rows(parent, cfg.data_dir) if parent else []:
            leaks.append(compare(trained, load, "harmful evaluation prompts", prompts))
            if task_records:
                leaks.append(compare(trained, load, f"{cfg.task} evaluation rows", task_records))
        report_leaks(leaks, strict)
        # Under torchrun / accelerate launch: one device per process; prompts are split across processes.
        state = distributed_state()
        model.to(state.device, getattr(torch, cfg.dtype))
        judge = get_judge(cfg.judge)
        result, harmful_rows, task_rows = evaluate_model(
            model,
            tok,
            harmful_prompts=prompts,
            judge=judge,
            task_records=task_records,
            task_name=cfg.task,
            max_new_tokens=cfg.max_new_tokens,
            task_max_new_tokens=cfg.task_max_new_tokens,
            batch_size=cfg.batch_size,
            template=cfg.template,
            progress=state.is_main_process,
        )
        if state.is_main_process:  # every process holds the same gathered results; one writes them
            write_jsonl(out.path / "harmful_samples.jsonl", harmful_rows)
            if task_rows:
                write_jsonl(out.path / "task_samples.jsonl", task_rows)
            result.details.update(
                prompt_set=cfg.harmful_prompts,
                judge=judge.name,
                judge_version=judge.version,
                run=cfg.run,
                model=cfg.model,
                leaks=[leak.as_dict() for leak in leaks],
                decoding={
                    "greedy": True,
                    "dtype": cfg.dtype,
                    "max_new_tokens": cfg.max_new_tokens,
                    "task_max_new_tokens": cfg.task_max_new_tokens,
                    "batch_size": cfg.batch_size,
                    "template": cfg.template,
                },
                versions=package_versions(),
                num_processes=state.num_processes,
                wall_time_s=round(time.perf_counter() - t0, 2),
            )
            write_json(out.path / "metrics.json", result.to_metrics())
            out.write_manifest(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        state.wait_for_everyone()  # the others return only once metrics.json exists
    return out
