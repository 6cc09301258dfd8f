"""Evaluate one model: harmful score on harmful prompts, fine-tune accuracy on a task.

`evaluate_model` returns the summary (an `EvaluationResult`) and the per-sample rows separately,
together an `EvaluationOutput`: summary numbers never go into per-sample rows, per-sample values
never into the summary. Under several processes
(torchrun / accelerate) the prompts are split across processes and gathered back in order
(`safeft.evaluation.distributed`); every process returns the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from safeft.data.records import Record
from safeft.data.templates import format_prompt
from safeft.evaluation.distributed import split_and_gather
from safeft.evaluation.generate import generate_answers
from safeft.evaluation.judges import Judge, is_refusal
from safeft.evaluation.metrics import (
    empty_rate,
    fine_tune_accuracy,
    harmful_metrics,
    incoherence_rate,
    is_incoherent,
    over_refusal_metrics,
    refusal_rate,
)
from safeft.evaluation.result import EvaluationResult

log = logging.getLogger("safeft")


def question_text(record: Record) -> str:
    """The question a judge sees: the instruction, plus the input when there is one."""
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction


# An engine that answers prompts by itself (vLLM): (prompts, max_new_tokens) -> answers in order.
Generator = Callable[[Sequence[str], int], list[str]]


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
    engine: str,
    generator: Generator | None,
) -> list[str]:
    if generator is not None:  # it spreads the work over its GPUs itself
        return generator(prompts, max_new_tokens)
    return split_and_gather(
        prompts,
        lambda part: generate_answers(
            model,
            tokenizer,
            part,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            engine=engine,
        ),
    )


class EvaluationOutput(NamedTuple):
    """What `evaluate_model` returns: the summary, and the per-sample rows of each prompt set."""

    result: EvaluationResult
    harmful_rows: list[dict[str, Any]]
    task_rows: list[dict[str, Any]]
    harmless_rows: list[dict[str, Any]]


def judge_pairs(judge: Judge, questions: Sequence[str], answers: Sequence[str]) -> list[dict[str, Any]]:
    """`{"flagged", "score"}` of every pair under `judge` (split across processes when launched)."""
    pairs = list(zip(questions, answers, strict=True))
    scores = split_and_gather(pairs, lambda part: judge.score([q for q, _ in part], [a for _, a in part]))
    return [{"flagged": s > judge.threshold, "score": round(float(s), 6)} for s in scores]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    *,
    harmful_prompts: Sequence[Record],
    judge: Judge,
    extra_judges: Sequence[Judge] = (),
    harmless_prompts: Sequence[Record] = (),
    task_records: Sequence[Record] | None = None,
    task_name: str | None = None,
    max_new_tokens: int = 128,
    task_max_new_tokens: int | None = None,
    batch_size: int = 16,
    template: str = "alpaca",
    progress: bool = True,
    engine: str = "prefix",
    generator: Generator | None = None,
) -> EvaluationOutput:
    """The summary of one model's evaluation and its per-sample rows.

    The summary (`EvaluationResult`) has, with harmful prompts, HS under `judge` with its Wilson
    interval, HS under every judge of `extra_judges` and their agreement with `judge`, HS+, the
    refusal, incoherence and empty rates; with harmless prompts the over-refusal rate; with a task FA
    (None for tasks without accuracy); and the timing in seconds. Harmless prompts get the harmful
    prompts' `max_new_tokens`; `task_max_new_tokens` defaults to it too.
    """
    chat_tok = tokenizer if template == "chat" else None
    result = EvaluationResult()
    timing = result.timing
    harmful_rows: list[dict[str, Any]] = []
    harmless_rows: list[dict[str, Any]] = []
    task_rows: list[dict[str, Any]] = []

    if harmful_prompts:
        prompts = [format_prompt(r, template, chat_tok) for r in harmful_prompts]
        t0 = time.perf_counter()
        answers = _generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, progress, engine, generator
        )
        t1 = time.perf_counter()
        questions = [question_text(r) for r in harmful_prompts]
        verdicts = {j.name: judge_pairs(j, questions, answers) for j in (judge, *extra_judges)}
        t2 = time.perf_counter()
        result.update(harmful_metrics(verdicts, judge.name, answers))
        for j in (judge, *extra_judges):
            result.judges[j.name].update(version=j.version, threshold=j.threshold)
        result.refusal_rate, result.incoherence_rate = refusal_rate(answers), incoherence_rate(answers)
        result.empty_rate, result.n_harmful, result.judge_threshold = (
            empty_rate(answers),
            len(answers),
            judge.threshold,
        )
        timing.update(harmful_generation_s=round(t1 - t0, 3), harmful_generation_s_per_prompt=round((t1 - t0) / len(prompts), 4),
                      judge_s=round(t2 - t1, 3), judge_s_per_prompt=round((t2 - t1) / len(prompts), 4))  # fmt: skip
        harmful_rows = [
            {
                "id": i,
                "prompt": q,
                "answer": a,
                "flagged": verdicts[judge.name][i]["flagged"],
                "score": verdicts[judge.name][i]["score"],
                "judges": {name: v[i] for name, v in verdicts.items()},
                "incoherent": is_incoherent(a),
                "refusal": is_refusal(a),
                "source": r.meta.get("source"),
                "row": r.meta.get("row"),
            }  # fmt: skip
            for i, (r, q, a) in enumerate(zip(harmful_prompts, questions, answers, strict=True))
        ]
        log.info(
            "harmful prompts: HS %.2f%% %s, HS+ %.2f%%, refusals %.2f%% (n=%d, judge %s)",
            result.hs,
            result.hs_ci95,
            result.hs_plus,
            result.refusal_rate,
            len(answers),
            judge.name,
        )

    if harmless_prompts:
        prompts = [format_prompt(r, template, chat_tok) for r in harmless_prompts]
        t0 = time.perf_counter()
        answers = _generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, progress, engine, generator
        )
        timing["harmless_generation_s"] = round(time.perf_counter() - t0, 3)
        refused = [is_refusal(a) for a in answers]
        result.update(over_refusal_metrics(refused))
        harmless_rows = [
            {"id": i, "prompt": question_text(r), "answer": a, "refusal": f, "source": r.meta.get("source"), "row": r.meta.get("row")}
            for i, (r, a, f) in enumerate(zip(harmless_prompts, answers, refused, strict=True))
        ]  # fmt: skip
        log.info("harmless requests: over-refusal %.2f%% (n=%d)", result.over_refusal_rate, len(answers))

    if task_records:
        from safeft.data.tasks import get_task

        if task_name is None:
            raise ValueError(
                "evaluate_model: task_records given without task_name; pass the task's name (e.g. 'sst2')"
            )
        task = get_task(task_name)
        prompts = [format_prompt(r, template, chat_tok) for r in task_records]
        t0 = time.perf_counter()
        answers = _generate(
            model,
            tokenizer,
            prompts,
            task_max_new_tokens or max_new_tokens,
            batch_size,
            progress,
            engine,
            generator,
        )
        t1 = time.perf_counter()
        strict = [task.score_strict(a, r) for a, r in zip(answers, task_records, strict=True)]
        lenient = [task.score_lenient(a, r) for a, r in zip(answers, task_records, strict=True)]
        result.task = task_name
        fa = fine_tune_accuracy(strict, lenient)
        result.fa_strict, result.fa_lenient, result.n_task = fa["fa_strict"], fa["fa_lenient"], fa["n_task"]
        timing.update(
            task_generation_s=round(t1 - t0, 3),
            task_generation_s_per_prompt=round((t1 - t0) / len(prompts), 4),
        )
        task_rows = [
            {
                "id": i,
                "instruction": r.instruction,
                "input": r.input,
                "answer": a,
                "reference": r.output,
                "strict": s,
                "lenient": le,
                "row": r.meta.get("row"),
            }  # fmt: skip
            for i, (r, a, s, le) in enumerate(zip(task_records, answers, strict, lenient, strict=True))
        ]
        log.info(
            "task %s: FA strict %s, lenient %s (n=%d)",
            task_name,
            result.fa_strict,
            result.fa_lenient,
            len(answers),
        )

    return EvaluationOutput(result, harmful_rows, task_rows, harmless_rows)
