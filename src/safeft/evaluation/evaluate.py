"""Evaluate one model: harmful score on harmful prompts, fine-tune accuracy on a task.

`evaluate_model` returns the summary (an `EvaluationResult`) and the per-sample rows separately: summary numbers
never go into per-sample rows, per-sample values never into the summary. Under several processes
(torchrun / accelerate) the prompts are split across processes and gathered back in order
(`safeft.evaluation.distributed`); every process returns the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from safeft.data.records import Record
from safeft.data.templates import format_prompt
from safeft.evaluation.distributed import split_and_gather
from safeft.evaluation.generate import generate_answers
from safeft.evaluation.judges import Judge, is_refusal
from safeft.evaluation.metrics import (
    empty_rate,
    fine_tune_accuracy,
    harmful_score,
    hs_plus,
    incoherence_rate,
    is_incoherent,
    refusal_rate,
)
from safeft.evaluation.result import EvaluationResult

log = logging.getLogger("safeft")


def question_text(record: Record) -> str:
    """The question a judge sees: the instruction, plus the input when there is one."""
    return f"{record.instruction}\n\n{record.input}" if record.input else record.instruction


def _generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int, progress: bool
) -> list[str]:
    return split_and_gather(
        prompts,
        lambda part: generate_answers(
            model, tokenizer, part, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        ),
    )


def evaluate_model(
    model: Any,
    tokenizer: Any,
    *,
    harmful_prompts: Sequence[Record],
    judge: Judge,
    task_records: Sequence[Record] | None = None,
    task_name: str | None = None,
    max_new_tokens: int = 128,
    task_max_new_tokens: int | None = None,
    batch_size: int = 16,
    template: str = "alpaca",
    progress: bool = True,
) -> tuple[EvaluationResult, list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary, harmful per-sample rows, task per-sample rows).

    The summary has HS and its companions when there are harmful prompts, FA (None for tasks
    without accuracy) when there is a task, and the timing in seconds. `task_max_new_tokens`
    defaults to `max_new_tokens`.
    """
    chat_tok = tokenizer if template == "chat" else None
    result = EvaluationResult()
    timing = result.timing
    harmful_rows: list[dict[str, Any]] = []
    task_rows: list[dict[str, Any]] = []

    if harmful_prompts:
        prompts = [format_prompt(r, template, chat_tok) for r in harmful_prompts]
        t0 = time.perf_counter()
        answers = _generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
        t1 = time.perf_counter()
        questions = [question_text(r) for r in harmful_prompts]
        pairs = list(zip(questions, answers, strict=True))
        scores = split_and_gather(pairs, lambda part: judge.score([q for q, _ in part], [a for _, a in part]))
        t2 = time.perf_counter()
        flags = [s > judge.threshold for s in scores]
        result.hs, result.hs_plus = harmful_score(flags), hs_plus(flags, answers)
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
                "flagged": f,
                "score": round(float(s), 6),
                "incoherent": is_incoherent(a),
                "refusal": is_refusal(a),
                "source": r.meta.get("source"),
                "row": r.meta.get("row"),
            }  # fmt: skip
            for i, (r, q, a, f, s) in enumerate(
                zip(harmful_prompts, questions, answers, flags, scores, strict=True)
            )
        ]
        log.info(
            "harmful prompts: HS %.2f%%, HS+ %.2f%%, refusals %.2f%% (n=%d, judge %s)",
            result.hs,
            result.hs_plus,
            result.refusal_rate,
            len(answers),
            judge.name,
        )

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
            model, tokenizer, prompts, task_max_new_tokens or max_new_tokens, batch_size, progress
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

    return result, harmful_rows, task_rows
