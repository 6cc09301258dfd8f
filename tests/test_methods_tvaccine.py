"""T-Vaccine: blocks drawn by gradient-norm probabilities; only drawn blocks train; the rest checkpointed if asked."""

from __future__ import annotations

import torch

from _methods_support import collate, rows, tiny, trainer
from safeft.methods.hooks import find_decoder_blocks
from safeft.methods.tvaccine import TVaccineConfig, draw_blocks, sampling_probabilities


def test_probabilities_are_normalised_hidden_gradient_norms():
    torch.testing.assert_close(
        sampling_probabilities(torch.tensor([1.0, 3.0, 0.0, 4.0])), torch.tensor([0.125, 0.375, 0.0, 0.5])
    )
    torch.testing.assert_close(sampling_probabilities(torch.zeros(4)), torch.full((4,), 0.25))


def test_draw_frequencies_follow_q():
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    counts = torch.zeros(4)
    for step in range(4000):
        counts[draw_blocks(q, 1, seed=7, step=step)] += 1
    torch.testing.assert_close(counts / 4000, q, atol=0.025, rtol=0)


def test_draws_are_distinct_and_identical_for_the_same_seed_and_step():
    q = torch.tensor([0.05, 0.15, 0.3, 0.1, 0.4])
    draws = [draw_blocks(q, 3, seed=1, step=s) for s in range(50)]
    assert all(len(set(d)) == 3 for d in draws)
    assert draws == [draw_blocks(q, 3, seed=1, step=s) for s in range(50)]  # what a second process draws
    assert len({tuple(d) for d in draws}) > 1
    assert draw_blocks(q, 99, seed=1, step=0) == [0, 1, 2, 3, 4]  # S is clamped to the number of blocks
    assert draw_blocks(torch.tensor([0.0, 1.0, 0.0]), 1, seed=3, step=4) == [1]


def _block_of(name):
    return int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None


def test_only_the_drawn_blocks_adapters_change(tmp_path):
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = trainer(
        "tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2, resample_steps=20, probability_steps=20)
    )
    t.train()
    drawn = t.drawn
    assert len(drawn) == 2
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        trainable_in_drawn = "lora_" in n and _block_of(n) in drawn
        assert changed == trainable_in_drawn, n
    logged = t.state.log_history[0]
    assert [logged[f"tvaccine/drawn_{i}"] for i in range(4)] == [float(i in drawn) for i in range(4)]
    assert abs(sum(logged[f"tvaccine/q_{i}"] for i in range(4)) - 1) < 1e-5


def test_undrawn_blocks_run_under_checkpointing_and_keep_no_gradients(tmp_path):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2), checkpointing="on")
    t._planned_step = 0  # skip the probe and the draw: we choose the blocks
    t.set_drawn([0, 2])
    blocks = find_decoder_blocks(model)
    calls = [0] * 4
    for i, b in enumerate(blocks):
        # A pre-hook: recomputation stops early, once the tensors backward needs are rebuilt.
        b.self_attn.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))

    t.training_step(model, collate(rows(4, seed=10)))

    assert [getattr(b, "safeft_checkpointed_calls", 0) for b in blocks] == [0, 2, 0, 2]
    # Two passes; blocks 1 and 3 sit after a trainable block, so backward recomputes them.
    assert calls == [2, 4, 2, 4]
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert (p.grad is not None) == (_block_of(n) in (0, 2)), n
            assert p.requires_grad == (_block_of(n) in (0, 2))
    assert all("forward" not in vars(b) for b in blocks)  # the checkpoint wrapper is gone after the step


def _one_step_with_blocks_drawn(tmp_path, checkpointing, drawn=(0, 2)):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2), checkpointing=checkpointing)
    t._planned_step = 0  # skip the probe and the draw: we choose the blocks
    t.set_drawn(list(drawn))
    loss = t.training_step(model, collate(rows(4, seed=10)))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return t, model, loss, grads


def test_without_checkpointing_no_block_is_recomputed_and_the_gradient_is_bitwise_the_same(tmp_path):
    on, _, loss_on, grads_on = _one_step_with_blocks_drawn(tmp_path / "on", "on")
    off, model, loss_off, grads_off = _one_step_with_blocks_drawn(tmp_path / "off", "off")

    assert on.checkpointing.taken == "on" and off.checkpointing.taken == "off"
    assert all(getattr(b, "safeft_checkpointed_calls", 0) == 0 for b in find_decoder_blocks(model))
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys() and grads_on  # the drawn blocks' adapters
    assert all(torch.equal(grads_on[n], grads_off[n]) for n in grads_on), "recomputation changed a gradient"


def test_auto_checkpoints_only_when_a_memory_budget_says_memory_is_the_limit(tmp_path):
    from safeft.methods.loss import LossPath

    fast = trainer("tvaccine", tiny(), tmp_path / "a")
    small = trainer("tvaccine", tiny(), tmp_path / "b", loss_path=LossPath(memory_budget_mib=500))
    assert (fast.checkpointing.requested, fast.checkpointing.taken) == ("auto", "off")
    assert (small.checkpointing.requested, small.checkpointing.taken) == ("auto", "on")
    assert "memory_budget_mib" in small.checkpointing.reason


def test_perturbation_only_on_drawn_blocks_with_norm_rho(tmp_path):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2, perturbation_radius=3.0))
    t._planned_step = 0
    t.set_drawn([1, 3])
    t.training_step(model, collate(rows(4, seed=10)))
    assert abs(t._metrics["tvaccine/perturbation_norm"][-1].item() - 3.0) < 1e-4


def test_previous_block_skips_checkpointing_only_on_deep_models(tmp_path):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path)
    t.set_drawn([2])
    assert t.uncheckpointed == [2]  # 4 blocks: not deeper than 26
    t.blocks = t.blocks * 8  # pretend 32 blocks
    t.block_params = t.block_params * 8
    t.set_drawn([2, 9])
    assert t.uncheckpointed == [1, 2, 8, 9] and t.drawn == [2, 9]


def _deep_llama(blocks=28):
    """A Llama as deep as Llama-2-7B's 32 > 26 blocks regime (hidden 16: builds in a blink)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from safeft.models import LoraSettings, attach_lora

    config = LlamaConfig(
        vocab_size=2100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=blocks,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return attach_lora(AutoModelForCausalLM.from_config(config), LoraSettings())


def test_on_a_deep_model_only_the_drawn_blocks_train_and_their_predecessors_skip_checkpointing(tmp_path):
    # The reference (Lslland/T-Vaccine trainer.py, unfreeze_activate_layers) trains exactly the drawn
    # blocks; block i-1 only joins `activate_layers`, which exempts it from checkpointing.
    model = _deep_llama()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2), checkpointing="on")
    t._planned_step = 0  # skip the probe and the draw: we choose the blocks
    t.set_drawn([5, 20])

    t.training_step(model, collate(rows(2, seed=10)))

    with_gradient = {_block_of(n) for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}
    trainable = {_block_of(n) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}
    assert with_gradient == trainable == {5, 20}
    blocks = find_decoder_blocks(model)
    not_recomputed = {i for i, b in enumerate(blocks) if getattr(b, "safeft_checkpointed_calls", 0) == 0}
    assert not_recomputed == {4, 5, 19, 20}


def _attention(model):
    return [layer.self_attn for layer in model.base_model.model.model.layers]  # Llama, written out


def test_update_is_the_gradient_with_only_the_drawn_blocks_perturbed(tmp_path):
    """Independent: G on the drawn attention outputs by retain_grad, eps = ρ G / ||G||, then autograd."""
    rho, drawn = 3.0, [1, 3]
    model = tiny()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2, perturbation_radius=rho))
    t._planned_step = 0
    t.set_drawn(drawn)  # blocks 0 and 2 frozen; block 2's output still has a gradient (block 1 trains)
    batch = collate(rows(4, seed=10))
    attention = [_attention(model)[i] for i in drawn]
    params = [p for p in model.parameters() if p.requires_grad]

    outputs = []
    handles = [m.register_forward_hook(lambda m, a, out: outputs.append(out[0])) for m in attention]
    loss = model(**batch).loss
    for h in outputs:
        h.retain_grad()
    loss.backward()
    for h in handles:
        h.remove()
    G = [h.grad.detach().clone() for h in outputs]
    model.zero_grad()
    G_norm = torch.sqrt(sum((g**2).sum() for g in G))
    eps = iter([rho * g / (G_norm + 1e-7) for g in G])
    handles = [m.register_forward_hook(lambda m, a, out: (out[0] + next(eps), *out[1:])) for m in attention]
    expected = torch.autograd.grad(model(**batch).loss, params)
    for h in handles:
        h.remove()

    t.training_step(model, batch)

    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, atol=1e-6, rtol=1e-4)


def test_under_full_finetuning_tensors_outside_the_blocks_are_frozen_while_blocks_are_drawn(tmp_path):
    model = tiny(full=True)
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=1))
    t.set_drawn([2])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_block_of(n) == 2 for n in trainable)  # embeddings, final norm: frozen
