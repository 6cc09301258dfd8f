"""The response loss without full logits: the same number and gradients as from the model's own logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from _methods_support import collate, rows, tiny, trainer
from safeft.methods.loss import CHUNK_BYTES, LossPath, deferrable_output_layer
from safeft.models import LoraSettings, _tiny_tokenizer, attach_lora


def _reference_loss(model, batch) -> torch.Tensor:
    """Written out by hand: full logits, drop the last position, compare with the next token's label."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    predicted, wanted = logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten()
    keep = wanted != -100
    return F.cross_entropy(predicted[keep], wanted[keep])


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-qwen2"])
@pytest.mark.parametrize("bf16", [False, True])
def test_deferred_loss_equals_the_full_logits_loss_in_value_and_gradient(name, bf16, tmp_path, monkeypatch):
    # small chunks, so that a batch spans several chunks of the checkpointed output layer
    monkeypatch.setattr("safeft.methods.loss.CHUNK_BYTES", 4 * 30522 * 5)
    model = tiny(name).eval()  # no dropout (GPT-2 has some): two forwards must see the same network
    t = trainer("sft", model, tmp_path, train_args={"bf16": bf16}, loss_path=LossPath("deferred"))
    batch = collate(rows(6, seed=4))

    loss, outputs = t.lm_loss(model, batch)
    assert t.output_layer is not None  # the deferred path was taken
    assert outputs.logits.numel() == 0  # no full logits were formed
    loss.backward()
    deferred = _grads(model)
    model.zero_grad()

    with t.compute_loss_context_manager():
        expected = _reference_loss(model, batch)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5 if not bf16 else 2e-3)
    for n, g in _grads(model).items():
        torch.testing.assert_close(
            deferred[n], g, rtol=1e-4 if not bf16 else 2e-2, atol=1e-6 if not bf16 else 1e-4
        )


def test_num_items_in_batch_replaces_the_token_count(tmp_path):
    model = tiny()
    t = trainer("sft", model, tmp_path)
    batch = collate(rows(4, seed=5))
    responses = int((batch["labels"][:, 1:] != -100).sum())
    mean, _ = t.lm_loss(model, batch)
    summed_over_ten, _ = t.lm_loss(model, batch, num_items_in_batch=10)
    assert summed_over_ten.item() == pytest.approx(mean.item() * responses / 10, rel=1e-6)


def _softcapped_model():
    tok = _tiny_tokenizer()
    config = tf.Gemma2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return attach_lora(tf.AutoModelForCausalLM.from_config(config), LoraSettings())


def test_a_model_that_post_processes_its_logits_keeps_the_full_logits(tmp_path):
    """Gemma 2 soft-caps its logits after the output layer: the check sees it and falls back."""
    model = _softcapped_model()
    t = trainer("sft", model, tmp_path)
    batch = collate(rows(4, seed=6))
    assert deferrable_output_layer(model) is None
    loss, outputs = t.lm_loss(model, batch)
    assert outputs.logits.numel() > 0
    assert loss.item() == pytest.approx(_reference_loss(model, batch).item(), rel=1e-6)


def test_a_trainable_output_layer_keeps_the_full_logits(tmp_path):
    model = tiny(full=True)  # full fine-tuning: the (tied) output layer trains
    assert deferrable_output_layer(model) is None


def test_chunks_are_sized_by_bytes():
    # the byte budget gives SmolLM2's 49,152-token vocabulary chunks of ~170 positions (16 at least)
    assert max(16, CHUNK_BYTES // (4 * 49_152)) == 170


def test_output_layer_chunks_respect_the_byte_budget(monkeypatch):
    """Each output-layer call gets CHUNK_BYTES // (4 · vocabulary) rows (at least 16), in order."""
    from safeft.methods.loss import response_cross_entropy_sum

    vocabulary, width = 50, 4
    head = torch.nn.Linear(width, vocabulary, bias=False)
    rows_per_call = []
    head.register_forward_hook(lambda m, args, out: rows_per_call.append(args[0].shape[0]))
    hidden = torch.randn(2, 60, width)
    labels = torch.randint(0, vocabulary, (2, 60))  # 2 x 59 = 118 targets after the shift
    for budget, expected in (
        (4 * vocabulary * 40, [40, 40, 38]),
        (4 * vocabulary * 100, [100, 18]),
        (8, [16] * 7 + [6]),
    ):
        monkeypatch.setattr("safeft.methods.loss.CHUNK_BYTES", budget)
        rows_per_call.clear()
        with torch.no_grad():
            total = response_cross_entropy_sum(head, hidden, labels)
        assert rows_per_call == expected, budget
        full = torch.nn.functional.cross_entropy(
            head(hidden[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(), reduction="sum"
        )
        torch.testing.assert_close(total, full)


def test_checkpointing_off_keeps_the_chunks_logits_instead_of_recomputing_them_same_numbers():
    from safeft.methods.loss import response_cross_entropy_sum

    torch.manual_seed(0)
    vocabulary, width = 50, 4
    head = torch.nn.Linear(width, vocabulary, bias=False).requires_grad_(False)
    labels = torch.randint(0, vocabulary, (2, 60))
    results = {}
    for recompute in (True, False):
        calls: list[int] = []
        handle = head.register_forward_hook(lambda m, args, out, calls=calls: calls.append(args[0].shape[0]))
        hidden = torch.randn(2, 60, width, generator=torch.Generator().manual_seed(1), requires_grad=True)
        total = response_cross_entropy_sum(head, hidden, labels, chunk_tokens=40, recompute=recompute)
        total.backward()
        handle.remove()
        results[recompute] = (calls, total.detach(), hidden.grad)
    # 118 targets in chunks of 40: with recomputation each chunk's forward runs again in backward
    assert sorted(results[True][0]) == sorted([40, 40, 38] * 2)
    assert results[False][0] == [40, 40, 38]
    assert torch.equal(results[True][1], results[False][1])
    assert torch.equal(results[True][2], results[False][2])
