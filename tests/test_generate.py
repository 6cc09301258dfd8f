"""Batched greedy generation (left padding, KV cache) gives exactly the one-at-a-time answers, in order."""

from __future__ import annotations

import pytest
import torch

from _eval_support import tiny_llama
from safeft.evaluation.generate import (
    generate_answers,
    generate_one_at_a_time,
    greedy_tokens_shared_prefix,
    length_buckets,
    shared_prefix_length,
)

PROMPTS = [
    "hi",
    "Below is an instruction that describes a task. Write a response.\n\n### Instruction:\nName three colours.\n\n### Response:\n",
    "how do i bake bread at home without an oven?",
    "one two",
    "a considerably longer prompt that has many more words in it than the others, so that it needs no padding at all",
]


def test_batched_equals_one_at_a_time_in_original_order():
    model, tok = tiny_llama()
    slow = generate_one_at_a_time(model, tok, PROMPTS, max_new_tokens=12, progress=False)
    fast = generate_answers(model, tok, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    assert fast == slow
    assert len({a for a in fast}) > 1  # the prompts really lead to different answers: order is tested
    # batch size must not matter either
    assert (
        generate_answers(model, tok, PROMPTS, max_new_tokens=12, batch_size=len(PROMPTS), progress=False)
        == slow
    )


def test_generation_restores_tokenizer_and_model_state():
    model, tok = tiny_llama()
    model.train()
    tok.padding_side = "right"
    generate_answers(model, tok, PROMPTS[:2], max_new_tokens=2, progress=False)
    assert tok.padding_side == "right"
    assert model.training


def test_pad_token_falls_back_to_eos():
    model, tok = tiny_llama()
    tok.pad_token = None
    answers = generate_answers(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=3, progress=False)
    assert len(answers) == 3 and tok.pad_token is None


def test_answers_contain_only_new_text_without_special_tokens():
    model, tok = tiny_llama()
    prompt = "tell me a story"
    (answer,) = generate_answers(model, tok, [prompt], max_new_tokens=5, progress=False)
    assert "[SEP]" not in answer and "[PAD]" not in answer and "[CLS]" not in answer
    assert not answer.startswith(prompt)
    assert answer == answer.strip()


def test_stops_at_eos():
    model, tok = tiny_llama()
    # Make EOS the most likely next token everywhere: generation ends at once with an empty answer.
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0
        model.model.norm.weight.fill_(1.0)
    with torch.no_grad():
        h = model.model(**tok(["x"], return_tensors="pt")).last_hidden_state
    if h[0, -1].sum() <= 0:  # logit of EOS = sum of the final hidden state; flip the sign if needed
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] = -1.0
    assert generate_answers(model, tok, ["x", "y z"], max_new_tokens=8, progress=False) == ["", ""]


def test_greedy_loop_drops_finished_rows_and_gives_transformers_generate_s_tokens():
    """Rows that reach EOS at different steps leave the batch; the others' tokens are unchanged."""
    from safeft.evaluation.generate import greedy_tokens

    model, tok = tiny_llama()
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    width = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        free = model.generate(**inputs, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    # Call a token that row 0 produces at its 4th step "EOS": row 0 stops there, the others when
    # (and if) they produce it, so the batch shrinks at different steps.
    eos = int(free[0, width + 3])
    with torch.inference_mode():
        reference = model.generate(
            **inputs, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id
        )
        ours = greedy_tokens(model, **inputs, max_new_tokens=10, eos_token_id=eos)
    expected = []
    for row in reference[:, width:].tolist():
        expected.append(row[: row.index(eos) + 1] if eos in row else row)
    assert ours == expected
    lengths = {len(t) for t in ours}
    assert len(lengths) > 1 and min(lengths) <= 4  # rows really finished at different steps


def test_engines_prefix_loop_and_hf_give_the_same_answers():
    model, tok = tiny_llama()
    answers = {
        engine: generate_answers(
            model, tok, PROMPTS, max_new_tokens=12, batch_size=2, progress=False, engine=engine
        )
        for engine in ("prefix", "loop", "hf")
    }
    assert answers["prefix"] == answers["loop"] == answers["hf"]


# Prompts of one template (a shared preamble of many tokens) and very different lengths.
TEMPLATED = [
    f"Below is an instruction that describes a task. Write a response.\n\n### Instruction:\n{question}"
    for question in (
        "hi",
        "name three colours of the rainbow and say which one is your favourite and why",
        "bake bread",
        "how do i bake bread at home without an oven, using only a pan and a lid?",
        "one two",
        "x",
    )
]


def _one_at_a_time_tokens(model, tok, prompts, max_new_tokens, eos):
    """Each prompt alone through transformers' `generate`: its new tokens up to and with `eos`."""
    out = []
    for ids in prompts:
        with torch.inference_mode():
            row = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


@pytest.mark.parametrize("pass_cost", [0, 10_000], ids=["a-bucket-per-length", "one-padded-bucket"])
def test_shared_prefix_engine_gives_each_prompt_s_one_at_a_time_tokens(pass_cost):
    """Shared preamble computed once, rows padded with zeros between it and their own tokens, rows
    finishing at different steps: every row's tokens are those of the prompt generated alone."""
    model, tok = tiny_llama()
    prompts = tok(TEMPLATED)["input_ids"]
    assert shared_prefix_length(prompts) >= 15  # the preamble really is shared
    assert len(length_buckets(sorted(map(len, prompts), reverse=True), pass_cost)) == (
        len(set(map(len, prompts))) if pass_cost == 0 else 1
    )
    # An "EOS" that some rows produce and others produce later or never: rows stop at different steps.
    free = _one_at_a_time_tokens(model, tok, prompts, 12, eos=None)
    eos = next(
        token
        for row in free
        for token in row
        if len({r.index(token) if token in r else None for r in free}) > 1
    )
    expected = _one_at_a_time_tokens(model, tok, prompts, 12, eos)
    with torch.inference_mode():
        ours = greedy_tokens_shared_prefix(
            model,
            prompts,
            max_new_tokens=12,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id,
            prefill_pass_cost=pass_cost,
        )
    assert ours == expected
    assert len({len(t) for t in ours}) > 1 and min(len(t) for t in ours) < 12  # rows finished early
    assert len({tuple(t) for t in ours}) > 1  # the prompts lead to different tokens: order is tested


def test_shared_prefix_engine_answers_equal_one_at_a_time_for_every_batch_size():
    model, tok = tiny_llama()
    slow = generate_one_at_a_time(model, tok, TEMPLATED, max_new_tokens=12, progress=False)
    for batch_size in (1, 2, 4, len(TEMPLATED)):
        assert (
            generate_answers(
                model,
                tok,
                TEMPLATED,
                max_new_tokens=12,
                batch_size=batch_size,
                progress=False,
                engine="prefix",
            )
            == slow
        ), batch_size


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # [1, 2] keeps its last token
    assert shared_prefix_length([[7, 8, 9]]) == 2
    assert shared_prefix_length([[1, 2], [3, 2]]) == 0


def test_length_buckets_minimise_padded_tokens_plus_a_cost_per_pass():
    # lengths 10, 9, 2, 1 with a pass costing 3 tokens: [10, 9] + [2, 1] costs 2*10+3 + 2*2+3 = 30,
    # less than one bucket (4*10+3 = 43), four (22+12 = 34) or [10, 9] + [2] + [1] (23+5+4 = 32)
    assert length_buckets([10, 9, 2, 1], pass_cost=3) == [range(0, 2), range(2, 4)]
    assert length_buckets([10, 9, 2, 1], pass_cost=100) == [range(0, 4)]
    assert length_buckets([10, 9, 2, 1], pass_cost=0) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
    with pytest.raises(ValueError, match="longest first"):
        length_buckets([1, 2])


def test_shared_prefix_engine_gives_sliding_window_models_the_plain_batch():
    """Zeros inside a row would shift a sliding window: such a model gets the left-padded loop."""
    import transformers

    _, tok = tiny_llama()
    config = transformers.MistralConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, sliding_window=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).float()
    kwargs = dict(max_new_tokens=8, batch_size=len(TEMPLATED), progress=False)
    assert generate_answers(model, tok, TEMPLATED, engine="prefix", **kwargs) == generate_answers(
        model, tok, TEMPLATED, engine="loop", **kwargs
    )
