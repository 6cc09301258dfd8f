"""Greedy answers to many prompts: batched, left-padded, with the KV cache.

Why left padding: a decoder-only model continues from the last position of each row, so every
prompt must end at the same column; padding goes on the left and the attention mask hides it
(transformers derives the position ids from the mask). Prompts are sorted by length before
batching, so a batch wastes little compute on padding, and the answers are put back in the
original order. `generate_one_at_a_time` is the reference's slow way (one prompt per call, no
padding); tests check that both give the same greedy answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def _generation_setup(model: Any, tokenizer: Any, padding_side: str | None) -> Iterator[dict[str, Any]]:
    """Eval mode, a pad token, the padding side; everything restored afterwards. Yields generate() kwargs."""
    saved_side, saved_pad, was_training = tokenizer.padding_side, tokenizer.pad_token, model.training
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    model.eval()
    try:
        yield {
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "use_cache": True,
        }
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)


def _sampling_kwargs(do_sample: bool) -> dict[str, Any]:
    # Greedy: also clear any sampling defaults the model's generation_config carries, so
    # transformers neither warns nor samples behind our back.
    if do_sample:
        return {"do_sample": True}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def greedy_tokens(
    model: Any, input_ids: Any, attention_mask: Any, *, max_new_tokens: int, eos_token_id: int
) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with a KV cache; a row leaves the batch at its EOS.

    What `model.generate` does for greedy search, minus its per-step machinery (logits processors,
    stopping criteria, padding finished rows): a finished row's keys and values are dropped from
    the cache (`Cache.batch_select_indices`), so every later step computes only unfinished rows.
    Position ids follow the attention mask as in `generate`. Returns each row's new tokens (EOS included).
    """
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    rows = torch.arange(input_ids.shape[0])  # the batch row of each unfinished row
    tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    step_input = input_ids
    for step in range(max_new_tokens):
        logits = model(
            input_ids=step_input,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the prompt's other positions need no vocabulary projection
        ).logits[:, -1]
        next_tokens = logits.argmax(-1)
        for row, token in zip(rows.tolist(), next_tokens.tolist(), strict=True):
            tokens[row].append(token)
        if step == max_new_tokens - 1:
            break
        unfinished = next_tokens != eos_token_id
        if not unfinished.all():
            keep = unfinished.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            rows, next_tokens, attention_mask = rows[keep], next_tokens[keep], attention_mask[keep]
            positions = positions[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_input = next_tokens[:, None]
    return tokens


ENGINES = ("loop", "hf")


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    progress: bool = True,
    engine: str = "loop",
) -> list[str]:
    """The model's answer to every prompt (only the new text, special tokens dropped, stripped), in input order.

    Prompts are used verbatim (format them with `safeft.data.templates.format_prompt` first).
    Generation stops at EOS or after `max_new_tokens`. `engine`: "loop" (`greedy_tokens`, finished
    rows leave the batch; greedy only) or "hf" (`model.generate`; also for sampling).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: got {engine!r}, expected one of {', '.join(ENGINES)}")
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
    prompts = list(prompts)
    device = next(model.parameters()).device
    lengths = (
        [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]] if prompts else []
    )
    order = sorted(
        range(len(prompts)), key=lambda i: lengths[i], reverse=True
    )  # longest first: OOM shows at once
    answers = [""] * len(prompts)
    with _generation_setup(model, tokenizer, "left") as gen_kwargs, torch.inference_mode():
        for start in tqdm(
            range(0, len(order), batch_size), desc="generating", unit="batch", disable=not progress
        ):
            idx = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            batch = {
                k: batch[k] for k in ("input_ids", "attention_mask")
            }  # no token_type_ids (BERT-style tokenizers)
            if engine == "loop" and not do_sample:
                new_tokens = greedy_tokens(
                    model, **batch, max_new_tokens=max_new_tokens, eos_token_id=gen_kwargs["eos_token_id"]
                )
            else:
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, **_sampling_kwargs(do_sample), **gen_kwargs
                )
                new_tokens = out[:, batch["input_ids"].shape[1] :]  # left padding: prompts end at one column
            for i, text in zip(
                idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
            ):
                answers[i] = text.strip()
    return answers


def generate_one_at_a_time(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    progress: bool = True,
) -> list[str]:
    """The reference's way: one prompt per `generate` call, no padding. Slow; for benchmarks and tests."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    answers = []
    with _generation_setup(model, tokenizer, None) as gen_kwargs, torch.inference_mode():
        for prompt in tqdm(prompts, desc="generating (one at a time)", disable=not progress):
            batch = tokenizer(prompt, return_tensors="pt").to(device)
            batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, **_sampling_kwargs(do_sample), **gen_kwargs
            )
            answers.append(
                tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            )
    return answers
