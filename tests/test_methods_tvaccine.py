"""T-Vaccine: blocks drawn by gradient-norm probabilities; only drawn blocks train; the rest checkpointed."""

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
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2))
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


def test_perturbation_only_on_drawn_blocks_with_norm_rho(tmp_path):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path, TVaccineConfig(sampled_blocks=2, perturbation_radius=3.0))
    t._planned_step = 0
    t.set_drawn([1, 3])
    t.training_step(model, collate(rows(4, seed=10)))
    assert abs(t._metrics["tvaccine/perturbation_norm"][-1].item() - 3.0) < 1e-4


def test_previous_block_is_activated_only_on_deep_models(tmp_path):
    model = tiny()
    t = trainer("tvaccine", model, tmp_path)
    t.set_drawn([2])
    assert t.active == [2]  # 4 blocks: not deeper than 26
    t.blocks = t.blocks * 8  # pretend 32 blocks
    t.block_params = t.block_params * 8
    t.set_drawn([2, 9])
    assert t.active == [1, 2, 8, 9] and t.drawn == [2, 9]
