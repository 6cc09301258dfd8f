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
    stopping criteria, padding finished rows): see `_greedy_decode`. Position ids follow the
    attention mask as in `generate`. Returns each row's new tokens (EOS included).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = _prompt_positions(attention_mask)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # the prompt's other positions need no vocabulary projection
    ).logits[:, -1]
    return _greedy_decode(
        model,
        cache,
        logits,
        attention_mask,
        positions[:, -1:],
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
    )


def _prompt_positions(mask: Any, start: int = 0) -> Any:
    """Position ids of left-padded prompt tokens: `start`, `start`+1, … over each row's real tokens (after
    `start` shared ones already in the cache); padding gets 1, a harmless value its mask hides. Both
    engines use this one rule, so their answers stay identical to one prompt at a time."""
    return (start + mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _greedy_decode(
    model: Any,
    cache: Any,
    logits: Any,
    attention_mask: Any,
    last_positions: Any,
    *,
    max_new_tokens: int,
    eos_token_id: int,
) -> list[list[int]]:
    """Greedy tokens from a filled cache: `logits` and `last_positions` are those of each row's last prompt token.

    A finished row's keys and values are dropped from the cache (`Cache.batch_select_indices`), so
    every later step computes only unfinished rows.
    """
    import torch

    rows = torch.arange(logits.shape[0])  # the batch row of each unfinished row
    tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
    positions = last_positions
    for step in range(max_new_tokens):
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
        positions = positions + 1
        logits = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
    return tokens


# What one more forward pass is taken to cost, in prompt tokens (kernel launches, Python; a round
# figure, not measured per machine): the prefill of `greedy_tokens_shared_prefix` splits a batch
# into length buckets only where the padding it saves is worth more than the extra passes.
PREFILL_PASS_COST_TOKENS = 32


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def length_buckets(lengths: Sequence[int], pass_cost: int = PREFILL_PASS_COST_TOKENS) -> list[range]:
    """Split rows sorted longest first into consecutive buckets of least cost.

    A bucket's cost is its rows × its longest row (the tokens computed, padding included) plus
    `pass_cost`; the split minimising the total is found exactly (dynamic programming, O(rows²)).
    """
    if any(a < b for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError("length_buckets: lengths must be sorted longest first")
    best = [0] + [float("inf")] * len(lengths)  # best[j]: least cost of rows [0, j)
    start = [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[i] + pass_cost
            if cost < best[j]:
                best[j], start[j] = cost, i
    buckets, j = [], len(lengths)
    while j:
        buckets.append(range(start[j], j))
        j = start[j]
    return buckets[::-1]


def greedy_tokens_shared_prefix(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    prefill_pass_cost: int = PREFILL_PASS_COST_TOKENS,
) -> list[list[int]]:
    """`greedy_tokens` of the token lists `prompts`, with less prefill: each row's new tokens (EOS included).

    The prompts' common first tokens (the template's preamble) are computed once and their keys and
    values shared by every row; the rest of each prompt is computed in buckets of similar length
    (`length_buckets`), so little is spent on padding. The buckets' caches are joined, each row as
    [shared prefix | zeros | its own tokens]: the attention mask hides the zeros and the position
    ids continue from the prefix, so every row attends to exactly its own prompt, as when alone.
    Decoding is then `_greedy_decode`, as for `greedy_tokens`.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    device = next(model.parameters()).device
    n_shared = shared_prefix_length(prompts)
    shared = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in shared.layers):
        # sliding-window layers keep the last W cache slots: zeros inside a row would shift the
        # window, so such models get the plain left-padded batch
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor(
            [[pad_token_id] * (width - len(p)) + list(p) for p in prompts], device=device
        )
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        return greedy_tokens(model, input_ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    if n_shared:
        model(
            input_ids=torch.tensor([prompts[0][:n_shared]], device=device),
            past_key_values=shared,
            use_cache=True,
            logits_to_keep=1,  # only its keys and values are used
        )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    own_lengths = [len(prompts[i]) - n_shared for i in order]
    widest = own_lengths[0]
    rows, logits, masks, last_positions = [], [], [], []
    keys: list[list[Any]] = [[] for _ in shared.layers]
    values: list[list[Any]] = [[] for _ in shared.layers]
    for bucket in length_buckets(own_lengths, prefill_pass_cost):
        bucket_rows = [order[k] for k in bucket]
        width = own_lengths[bucket[0]]
        own = [list(prompts[i][n_shared:]) for i in bucket_rows]
        input_ids = torch.tensor([[pad_token_id] * (width - len(t)) + t for t in own], device=device)
        own_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in own], device=device)
        cache = DynamicCache(config=model.config)
        for layer_idx, layer in enumerate(shared.layers if n_shared else []):
            cache.update(
                layer.keys.expand(len(own), -1, -1, -1), layer.values.expand(len(own), -1, -1, -1), layer_idx
            )
        mask = torch.cat([own_mask.new_ones(len(own), n_shared), own_mask], dim=1)
        positions = _prompt_positions(own_mask, start=n_shared)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        gap = widest - width  # zeros before this bucket's own tokens: every row as wide as the widest
        for layer_idx, layer in enumerate(cache.layers):
            keys[layer_idx].append(_insert_zeros(layer.keys, n_shared, gap))
            values[layer_idx].append(_insert_zeros(layer.values, n_shared, gap))
        rows += bucket_rows
        logits.append(out.logits[:, -1])
        masks.append(torch.cat([mask[:, :n_shared], own_mask.new_zeros(len(own), gap), own_mask], dim=1))
        last_positions.append(positions[:, -1:])
    joined = DynamicCache(config=model.config)
    for layer_idx in range(len(keys)):
        joined.update(torch.cat(keys[layer_idx]), torch.cat(values[layer_idx]), layer_idx)
    tokens = _greedy_decode(
        model,
        joined,
        torch.cat(logits),
        torch.cat(masks),
        torch.cat(last_positions),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
    )
    in_order: list[list[int]] = [[] for _ in prompts]
    for row, row_tokens in zip(rows, tokens, strict=True):
        in_order[row] = row_tokens
    return in_order


def _insert_zeros(states: Any, at: int, count: int) -> Any:
    """`states` (batch, heads, positions, dim) with `count` zero positions inserted before position `at`."""
    import torch

    if not count:
        return states
    zeros = states.new_zeros(*states.shape[:2], count, states.shape[3])
    return torch.cat([states[:, :, :at], zeros, states[:, :, at:]], dim=2)


ENGINES = ("prefix", "loop", "hf")


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    progress: bool = True,
    engine: str = "prefix",
) -> list[str]:
    """The model's answer to every prompt (only the new text, special tokens dropped, stripped), in input order.

    Prompts are used verbatim (format them with `safeft.data.templates.format_prompt` first).
    Generation stops at EOS or after `max_new_tokens`. `engine`: "prefix" (`greedy_tokens_shared_prefix`:
    the common prompt prefix computed once, prefill in length buckets, finished rows leave the batch),
    "loop" (`greedy_tokens`: one left-padded prefill, finished rows leave the batch) — both greedy
    only — or "hf" (`model.generate`; also the path for sampling).
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
            texts = [prompts[i] for i in idx]
            if engine == "prefix" and not do_sample:  # token lists: it pads each bucket itself
                new_tokens = greedy_tokens_shared_prefix(
                    model,
                    tokenizer(texts, add_special_tokens=True)["input_ids"],
                    max_new_tokens=max_new_tokens,
                    eos_token_id=gen_kwargs["eos_token_id"],
                    pad_token_id=gen_kwargs["pad_token_id"],
                )
            else:
                batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
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
                    new_tokens = out[
                        :, batch["input_ids"].shape[1] :
                    ]  # left padding: prompts end at one column
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
