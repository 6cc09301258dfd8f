"""Throughput of evaluation: answers/s batched vs one prompt at a time, and each judge's pairs/s."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeft.data.records import Record
from safeft.data.templates import format_prompt

log = logging.getLogger("safeft.bench")

# Stand-ins for harmful evaluation prompts when no data folder is given (no harmful text needed
# to measure speed): varied lengths, like real prompts.
_TOPICS = [
    "a lock",
    "a car",
    "a bank account",
    "a neighbour's wifi",
    "a phone",
    "an exam",
    "a website",
    "a password",
]
_VERBS = ["open", "get into", "take over", "break", "copy", "bypass the protection of"]


def templated_prompts(n: int) -> list[str]:
    """`n` Alpaca-formatted prompts of varied length, built from templates."""
    out = []
    for i in range(n):
        topic, verb = _TOPICS[i % len(_TOPICS)], _VERBS[(i // len(_TOPICS)) % len(_VERBS)]
        detail = " Explain every step in detail, and say what tools I need." * (i % 3)
        out.append(
            format_prompt(Record(instruction=f"How can I {verb} {topic} without anyone noticing?{detail}"))
        )
    return out


def eval_prompts(n: int, data_dir: str | Path | None) -> tuple[list[str], str]:
    """(n prompts, where they came from): BeaverTails evaluation prompts if a data folder is given."""
    if data_dir:
        from safeft.data.sources import load_source

        records = load_source("beavertails-eval", data_dir=data_dir, limit=n)
        if len(records) >= n:
            return [
                format_prompt(r) for r in records[:n]
            ], f"first {n} BeaverTails evaluation prompts ({data_dir})"
        log.warning(
            "only %d BeaverTails evaluation prompts in %s; using templated prompts", len(records), data_dir
        )
    return templated_prompts(n), f"{n} templated prompts (no data folder given)"


@dataclass
class Throughput:
    items: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def task_prompts(n: int, data_dir: str | Path | None) -> tuple[list[str], str]:
    """(n SST-2 evaluation prompts, where they came from): the validation rows of a data folder, else templated sentences."""
    from safeft.data.tasks import SST2_INSTRUCTION

    if data_dir:
        from safeft.data.tasks import get_task

        records = get_task("sst2").load_eval(None, data_dir=data_dir)
        if len(records) >= n:
            return [format_prompt(r) for r in records[:n]], f"first {n} SST-2 validation rows ({data_dir})"
        log.warning("only %d SST-2 validation rows in %s; using templated sentences", len(records), data_dir)
    sentences = [
        f"the film about {topic} is {'not ' * (i % 2)}worth seeing{' , and the cast is fine' * (i % 3)} . "
        for i, topic in enumerate(_TOPICS * (n // len(_TOPICS) + 1))
    ][:n]
    return [
        format_prompt(Record(instruction=SST2_INSTRUCTION, input=s)) for s in sentences
    ], f"{n} templated sentences (no data folder given)"


# The generation paths compared, in the table's order: batched with the shared-prefix engine (the
# default), batched with the greedy loop (one left-padded prefill), one prompt per generate call.
# Both batched paths drop finished rows from the batch.
GENERATION_PATHS = ("batched_prefix", "batched_loop", "one_at_a_time")


def generation_throughput(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int
) -> tuple[dict[str, Throughput], list[str], dict[str, int]]:
    """Answers/s of every path of `GENERATION_PATHS` on the same prompts.

    Each runs once after a short untimed warm-up; they are interleaved halves (every path on the
    first half, then every path on the second half) so that machine load hits them alike. Returns
    the throughputs, the default engine's answers (input order) and, per batched path, how many of
    its answers are identical to the one-at-a-time answers.
    """
    from safeft.evaluation.generate import generate_answers, generate_one_at_a_time

    prompts = list(prompts)
    generate_answers(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)
    runs = {
        f"batched_{engine}": lambda chunk, engine=engine: generate_answers(
            model,
            tokenizer,
            chunk,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=False,
            engine=engine,
        )
        for engine in ("prefix", "loop")
    } | {
        "one_at_a_time": lambda chunk: generate_one_at_a_time(
            model, tokenizer, chunk, max_new_tokens=max_new_tokens, progress=False
        ),
    }
    half = len(prompts) // 2 or len(prompts)
    answers: dict[str, list[str]] = {name: [] for name in GENERATION_PATHS}
    seconds = dict.fromkeys(GENERATION_PATHS, 0.0)
    for chunk in (prompts[:half], prompts[half:]):
        if not chunk:
            continue
        for name in GENERATION_PATHS:
            start = time.perf_counter()
            answers[name] += runs[name](chunk)
            seconds[name] += time.perf_counter() - start
    reference = answers["one_at_a_time"]
    same = {
        name: sum(a == b for a, b in zip(answers[name], reference, strict=True))
        for name in GENERATION_PATHS[:-1]
    }
    return {k: Throughput(len(prompts), v) for k, v in seconds.items()}, answers["batched_prefix"], same


def decode_batching_ceiling(
    model: Any, batch_size: int, context_tokens: int, rounds: int = 5
) -> dict[str, float]:
    """How much cheaper per answer one decoding step gets when `batch_size` rows share it.

    Greedy decoding is one forward pass per new token. Batching can only make an answer cheaper by
    making that pass cheaper per row, so `batch_size * t(1 row) / t(batch_size rows)` for one step
    with `context_tokens` already cached bounds what any batched engine can gain over one prompt at a
    time from batching alone (a shared prefix saves prefill work on top of it). Medians of `rounds`
    steps, the two batch sizes interleaved, the cache cropped back after every step; in wall time
    and in the CPU time of this process (the steadier measure on a shared machine).
    """
    import torch
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    sizes = (1, batch_size)
    caches, next_ids = {}, {}
    wall: dict[int, list[float]] = {rows: [] for rows in sizes}
    cpu: dict[int, list[float]] = {rows: [] for rows in sizes}
    with torch.inference_mode():
        for rows in sizes:
            caches[rows] = DynamicCache(config=model.config)
            context = torch.randint(vocab, (rows, context_tokens), generator=generator)
            model(input_ids=context, past_key_values=caches[rows], use_cache=True)
            next_ids[rows] = torch.randint(vocab, (rows, 1), generator=generator)
        for round_ in range(rounds + 1):  # round 0 warms up
            for rows in sizes if round_ % 2 else sizes[::-1]:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                model(input_ids=next_ids[rows], past_key_values=caches[rows], use_cache=True)
                wall_s, cpu_s = time.perf_counter() - start_wall, time.process_time() - start_cpu
                caches[rows].crop(-1)  # drop the token this step appended
                if round_:
                    wall[rows].append(wall_s)
                    cpu[rows].append(cpu_s)
    one, batched = (statistics.median(wall[rows]) for rows in sizes)
    one_cpu, batched_cpu = (statistics.median(cpu[rows]) for rows in sizes)
    return {
        "batch_size": batch_size,
        "context_tokens": context_tokens,
        "step_seconds_one_row": one,
        "step_seconds_batch": batched,
        "ceiling": batch_size * one / batched,
        "ceiling_cpu_time": batch_size * one_cpu / batched_cpu,
    }


def judge_throughput(
    names: Sequence[str], prompts: Sequence[str], answers: Sequence[str], repeats: int = 3
) -> dict[str, Throughput | str]:
    """Pairs/s of each judge's `score` on the same (prompt, answer) pairs (best of `repeats`; load time excluded).

    A judge that cannot be loaded gets the reason instead of a number.
    """
    from safeft.evaluation.judges import get_judge

    out: dict[str, Throughput | str] = {}
    for name in names:
        try:
            judge = get_judge(name)
            judge.score(list(prompts[:2]), list(answers[:2]))  # loads weights lazily: not timed
        except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the benchmark goes on
            out[name] = f"unavailable: {type(e).__name__}: {e}"
            log.warning("judge %s unavailable: %s", name, e)
            continue
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            judge.score(list(prompts), list(answers))
            best = min(best, time.perf_counter() - start)
        out[name] = Throughput(len(prompts), best)
    return out
