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
from safeft.hardware import generation_dtype
from safeft.io import write_json, write_jsonl
from safeft.methods import METHODS
from safeft.models import load_model, load_weights_chain
from safeft.stages.runs import EXACT_ENGINES, RunDir, package_versions, stage_run

log = logging.getLogger("safeft")

HARMFUL_SAMPLES = "harmful_samples.jsonl"
HARMLESS_SAMPLES = "harmless_samples.jsonl"


@dataclass
class EvaluateConfig(Config):
    """Evaluation stage"""

    output: str = option(None, "folder for metrics.json and the per-sample JSONL files", fingerprint=False)
    run: str | None = option(None, "run directory (align or finetune) whose model to evaluate")
    model: str | None = option(None, "bare model to evaluate instead of a run")
    judge: str = option(
        "cpu", "harmfulness judge: its HS is `hs` (with a Wilson 95% interval)", choices=tuple(JUDGES)
    )
    extra_judges: list[str] = option(
        None,
        "judges whose HS is also reported, with its interval and its agreement with `judge` (default: keyword; [] for none)",
        default_factory=lambda: ["keyword"],
    )
    harmful_prompts: str = option("beavertails-eval", "harmful prompt set: source name or file")
    limit: int = option(1000, "harmful prompts to evaluate (the first N)", range=(0, None))
    harmless_prompts: str = option(
        "harmless-requests",
        "requests people labelled harmless, for the over-refusal rate: source name or file",
    )
    harmless_limit: int = option(
        100,
        "harmless requests to answer (the first N); over-refusal = % of them refused; 0 skips it",
        range=(0, None),
    )
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
    engine: str = option(
        "prefix",
        "generation engine: prefix (greedy; the prompts' common first tokens computed once, prefill in length "
        "buckets, finished rows leave the batch), loop (greedy; one left-padded prefill, finished rows leave "
        "the batch), hf (transformers' generate) — these three give transformers' greedy answers; "
        "vllm (GPU; LoRA adapter loaded natively; pip install 'safeft[vllm]')",
        choices=("prefix", "loop", "hf", "vllm"),
        # how answers are computed, not which (for the exact engines): earlier evaluations stay cached
        fingerprint=lambda engine: engine not in EXACT_ENGINES,
    )
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
        problems += [
            f"extra_judges: unknown judge {name!r}; available: {', '.join(JUDGES)}"
            for name in self.extra_judges
            if name not in JUDGES
        ]
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
        try:
            config = read_yaml(current.path / "config.yaml")
        except SafeftError as e:
            out.append((f"training rows of {current.path}", _unreadable(str(e))))
            break
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
        spec = METHODS.get(config.get("method", ""), METHODS["sft"])  # a plugin no longer installed: as SFT
        if stage == "align" or (stage == "finetune" and spec.needs_alignment):
            source, n = config.get("alignment_data"), config.get("alignment_samples")
            load = (
                (lambda s=source, n=n, d=where: load_source(s, data_dir=d)[:n])
                if source and n
                else _unreadable("its config.yaml names no alignment_data / alignment_samples")
            )
            out.append((f"alignment rows of {current.path}", load))
        if stage == "finetune" and spec.needs_harmful:
            source, n = config["defense_harmful_data"], config["defense_harmful_samples"]
            out.append(
                (
                    f"defense harmful rows of {current.path}",
                    lambda s=source, n=n, d=where: load_source(s, data_dir=d)[:n],
                )
            )
        parent = current.manifest.get("parent")
        current = RunDir.open(parent) if parent and (Path(parent) / "manifest.json").is_file() else None
    return out


def _unreadable(reason: str) -> Callable[[], list]:
    def load() -> list:
        raise SafeftError(reason)

    return load


def _harmless_requests(cfg: EvaluateConfig) -> tuple[list, str | None]:
    """(harmless requests for the over-refusal rate, why none were loaded).

    The default set lives in the data folder (`guard_prompts/`); without it the evaluation still runs,
    says so in the log and in metrics.json (`over_refusal_skipped`). A set the user named must load.
    """
    if not cfg.harmless_limit:
        return [], None
    try:
        rows = load_source(cfg.harmless_prompts, data_dir=cfg.data_dir)
    except SafeftError as e:
        if cfg.harmless_prompts != EvaluateConfig.harmless_prompts:
            raise
        log.warning("over-refusal not measured: %s", e)
        return [], f"the default harmless requests are not available ({str(e)[:200]})"
    return take(rows, cfg.harmless_limit, f"harmless requests from {cfg.harmless_prompts}"), None


def run_evaluate(cfg: EvaluateConfig, *, overwrite: bool = False, strict: bool = False) -> RunDir:
    """Evaluate a run's model (or a bare model) into `cfg.output`; `overwrite` replaces an evaluation there.

    `strict` refuses to score rows the model was trained on (see `safeft.data.leaks`).
    """
    out = RunDir(Path(cfg.output))
    if not overwrite and out.is_done_for(cfg):
        log.info("evaluation %s is already done; reusing it", out.path)
        return RunDir.open(out.path)
    parent = RunDir.open(cfg.run, stages=("align", "finetune", "repair")) if cfg.run else None
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
        generator = None
        if cfg.engine == "vllm":
            from safeft.evaluation.vllm_engine import vllm_generator

            base = parent.manifest["base_model"] if parent else cfg.model
            chain = parent.manifest.get("weights", []) if parent else []
            generator = vllm_generator(base, chain, out.path, dtype=cfg.dtype, cache=cfg.cache_dir)  # type: ignore[arg-type]
            from transformers import AutoTokenizer

            model, tok = None, AutoTokenizer.from_pretrained(generator.base)  # prompt templates only
        elif parent:
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
        harmless, harmless_skipped = _harmless_requests(cfg)
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
        dtype_used = generation_dtype(cfg.dtype, "generation")
        if model is not None:
            model.to(state.device, getattr(torch, dtype_used))
        judge = get_judge(cfg.judge)
        extra_judges = [get_judge(name) for name in cfg.extra_judges if name != cfg.judge]
        result, harmful_rows, task_rows, harmless_rows = evaluate_model(
            model,
            tok,
            harmful_prompts=prompts,
            judge=judge,
            extra_judges=extra_judges,
            harmless_prompts=harmless,
            task_records=task_records,
            task_name=cfg.task,
            max_new_tokens=cfg.max_new_tokens,
            task_max_new_tokens=cfg.task_max_new_tokens,
            batch_size=cfg.batch_size,
            template=cfg.template,
            progress=state.is_main_process,
            engine=cfg.engine,
            generator=generator,
        )
        if state.is_main_process:  # every process holds the same gathered results; one writes them
            write_jsonl(out.path / HARMFUL_SAMPLES, harmful_rows)
            if task_rows:
                write_jsonl(out.path / "task_samples.jsonl", task_rows)
            if harmless_rows:
                write_jsonl(out.path / HARMLESS_SAMPLES, harmless_rows)
            result.details.update(
                prompt_set=cfg.harmful_prompts,
                harmless_set=cfg.harmless_prompts if harmless else None,
                **({"over_refusal_skipped": harmless_skipped} if harmless_skipped else {}),
                judge=judge.name,
                judge_version=judge.version,
                run=cfg.run,
                model=cfg.model,
                leaks=[leak.as_dict() for leak in leaks],
                decoding={
                    "greedy": True,
                    "dtype": cfg.dtype,
                    "dtype_used": dtype_used,
                    "max_new_tokens": cfg.max_new_tokens,
                    "task_max_new_tokens": cfg.task_max_new_tokens,
                    "batch_size": cfg.batch_size,
                    "engine": cfg.engine,
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


def _saved_verdicts(rows: list[dict], primary: str) -> dict[str, list[dict]]:
    """Every judge's per-pair verdicts saved in an evaluation (older runs saved only the primary's)."""
    if rows and "judges" in rows[0]:
        return {name: [r["judges"][name] for r in rows] for name in rows[0]["judges"]}
    return {primary: [{"flagged": r["flagged"], "score": r["score"]} for r in rows]}


def rejudge(eval_dir: str | Path, judge_name: str, **judge_kwargs: object) -> dict:
    """Score the saved answers of an evaluation with another judge; update its files; return its metrics.

    Nothing is generated again. The judge's verdicts are added to every row of
    `harmful_samples.jsonl` and its HS (with interval and agreement) to `metrics.json`; re-judging
    with the evaluation's own judge name (e.g. a retrained `cpu`) replaces that judge's verdicts and
    so `hs`. Each file is replaced atomically; run it again after an interruption.
    """
    from safeft.evaluation.evaluate import judge_pairs
    from safeft.evaluation.metrics import harmful_metrics
    from safeft.evaluation.result import EvaluationResult
    from safeft.io import read_json, read_jsonl

    run = RunDir.open(eval_dir)
    samples = run.path / HARMFUL_SAMPLES
    if run.manifest.get("stage") not in (None, "evaluate") or not samples.is_file():
        raise SafeftError(
            f"{run.path} is not a finished evaluation with saved answers (no {HARMFUL_SAMPLES}); "
            "pass the --output folder of a 'safeft evaluate' run"
        )
    if run.manifest.get("status") != "done":
        raise SafeftError(f"evaluation {run.path} is not finished (status {run.manifest.get('status')!r})")
    result = EvaluationResult.from_metrics(read_json(run.path / "metrics.json"))
    rows = read_jsonl(samples)
    judge = get_judge(judge_name, **judge_kwargs)
    primary = result.details["judge"]
    verdicts = _saved_verdicts(rows, primary)
    old = result.judges or {
        primary: {"version": result.details.get("judge_version"), "threshold": result.judge_threshold}
    }
    replaced = old.get(judge.name, {}).get("version")
    verdicts[judge.name] = judge_pairs(judge, [r["prompt"] for r in rows], [r["answer"] for r in rows])
    result.update(harmful_metrics(verdicts, primary, [r["answer"] for r in rows]))
    for name, entry in result.judges.items():
        kept = (
            {"version": judge.version, "threshold": judge.threshold}
            if name == judge.name
            else old.get(name, {})
        )
        entry.update({k: v for k, v in kept.items() if k in ("version", "threshold")})
    if judge.name == primary:
        result.judge_threshold = judge.threshold
        result.details["judge_version"] = judge.version
    result.details.setdefault("rejudged", []).append(
        {"judge": judge.name, "version": judge.version, "replaced_version": replaced,
         "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    )  # fmt: skip
    for i, row in enumerate(rows):
        row["judges"] = {name: v[i] for name, v in verdicts.items()}
        row["flagged"], row["score"] = verdicts[primary][i]["flagged"], verdicts[primary][i]["score"]
    write_jsonl(samples, rows)
    metrics = result.to_metrics()
    write_json(run.path / "metrics.json", metrics)
    hs, interval = result.judges[judge.name]["hs"], result.judges[judge.name]["hs_ci95"]
    log.info("re-judged %s with %s: HS %s %s", run.path, judge.name, hs, interval)
    return metrics
