"""Batched greedy generation (left padding, KV cache) gives exactly the one-at-a-time answers, in order."""

from __future__ import annotations

import torch

from _eval_support import tiny_llama
from safeft.evaluation.generate import generate_answers, generate_one_at_a_time

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


def test_engine_hf_and_the_greedy_loop_give_the_same_answers():
    model, tok = tiny_llama()
    loop = generate_answers(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, progress=False)
    hf = generate_answers(model, tok, PROMPTS, max_new_tokens=12, batch_size=2, progress=False, engine="hf")
    assert loop == hf
