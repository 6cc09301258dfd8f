"""The `prefix` engine at several batch sizes on the same harmful prompts: seconds and identical answers.

    python bench/generation_batch_size.py --data-dir ../shared/data --prompts 128 --batch-sizes 32,128

Each batch size generates every prompt once (greedy, the evaluation's engine), in the order given;
wall and CPU seconds of this process are printed with how many answers equal the first batch size's.
CPU time is the steadier measure on a shared machine. First it prints what one prompt's prefill
costs in one-row decoding steps (CPU time, median of 7): the part of one-at-a-time generation that
batching cannot shrink much, since a prefill is already a batch of tokens. Complements `safeft bench`, whose generation
table compares the engines with one prompt at a time at one batch size and gives the batching
ceiling (`decode_batching_ceiling`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from safeft.bench.evaluation import eval_prompts
from safeft.evaluation.generate import generate_answers
from safeft.models import load_model


def prefill_in_decode_steps(
    model: Any, tokenizer: Any, prompts: list[str], rounds: int = 7
) -> dict[str, float]:
    """CPU seconds of one prefill of the prompts' mean length, of one one-row decoding step after it, and their ratio."""
    from transformers import DynamicCache

    tokens = round(statistics.mean(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts))
    ids = torch.randint(model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    prefill, step = [], []
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up
            cache = DynamicCache(config=model.config)
            start = time.process_time()
            model(input_ids=ids, past_key_values=cache, use_cache=True)
            prefill.append(time.process_time() - start)
            start = time.process_time()
            model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
            step.append(time.process_time() - start)
    p, d = statistics.median(prefill[1:]), statistics.median(step[1:])
    return {"prompt_tokens": tokens, "prefill_cpu_s": p, "step_cpu_s": d, "prefill_in_steps": p / d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--data-dir", default=None, help="BeaverTails evaluation prompts (else templated ones)"
    )
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="32,128", help="comma-separated; the first is the reference")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    prompts, where = eval_prompts(args.prompts, args.data_dir)
    print(json.dumps(prefill_in_decode_steps(model, tokenizer, prompts)), flush=True)
    results: dict[int, dict[str, float]] = {}
    first_answers: list[str] | None = None
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        wall, cpu = time.perf_counter(), time.process_time()
        answers = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=batch_size,
            progress=False,
        )
        results[batch_size] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        first_answers = first_answers or answers
        results[batch_size]["same_as_first"] = sum(
            a == b for a, b in zip(answers, first_answers, strict=True)
        )
        print(batch_size, json.dumps(results[batch_size]), flush=True)
    print(json.dumps({"prompts": where, "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
