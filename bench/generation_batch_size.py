"""The `prefix` engine at several batch sizes on the same harmful prompts: seconds and identical answers.

    python bench/generation_batch_size.py --data-dir ../shared/data --prompts 128 --batch-sizes 32,128

Each batch size generates every prompt once (greedy, the evaluation's engine), in the order given;
wall and CPU seconds of this process are printed with how many answers equal the first batch size's.
CPU time is the steadier measure on a shared machine. Complements `safeft bench`, whose generation
table compares the engines with one prompt at a time at one batch size and gives the batching
ceiling (`decode_batching_ceiling`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from safeft.bench.evaluation import eval_prompts
from safeft.evaluation.generate import generate_answers
from safeft.models import load_model


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
