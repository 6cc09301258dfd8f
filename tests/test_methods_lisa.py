"""Lisa: the reference's schedule (alignment first), its warm-up boundary, which data each state trains on."""

from __future__ import annotations

import torch

from _methods_support import args, collate, rows, tiny, trainer
from safeft.methods import get_method
from safeft.methods.lisa import ALIGNMENT, FINETUNE, LisaConfig, add_proximal_term, phase_at, proximal_is_on


def test_each_cycle_starts_with_the_alignment_steps():
    # git-disl/Lisa ADMMTrainer: status starts as "alignment"; 100 alignment steps, then 900 fine-tuning.
    phases = [phase_at(s, 900, 100) for s in range(2000)]
    assert phases[:100] == [ALIGNMENT] * 100 and phases[100] == FINETUNE
    assert phases.count(FINETUNE) == 1800 and phases.count(ALIGNMENT) == 200
    switches = [s for s in range(1, 2000) if phases[s] != phases[s - 1]]
    assert switches == [100, 1000, 1100]
    assert [phase_at(s, 2, 1) for s in range(6)] == [ALIGNMENT, FINETUNE, FINETUNE] * 2


def test_warmup_boundary_is_strict_as_in_the_reference():
    # Reference: `if self.steps > 0.1 * len(train_dataloader) * epochs` (strictly greater).
    assert [proximal_is_on(s, 20, 0.1) for s in range(4)] == [False, False, False, True]
    assert [proximal_is_on(s, 25, 0.1) for s in range(4)] == [False, False, False, True]  # 2.5
    assert proximal_is_on(0, 10, 0.0) is False and proximal_is_on(1, 10, 0.0) is True


def test_proximal_term_on_a_hand_checked_example():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    # 0.5 + ρ/2 · (1 + 4 + (3-1)²) = 0.5 + 0.05 · 9
    got = add_proximal_term(torch.tensor(0.5), params, anchor, 0.1)
    assert abs(got.item() - 0.95) < 1e-7


def test_alignment_steps_train_on_the_alignment_data_and_finetune_steps_on_the_users(tmp_path):
    """With lr 0 the weights stay put, so each step's loss is the loss of the batch it trained on."""
    model = tiny()
    user_row, alignment_row = rows(1, seed=1)[0], rows(1, seed=3)[0]
    cfg = LisaConfig(finetune_steps=2, alignment_steps=1, proximal_weight=0.0)
    t = get_method("lisa").trainer_cls(
        model=model,
        args=args(tmp_path, max_steps=5, learning_rate=0.0),
        train_dataset=[user_row] * 8,
        data_collator=collate,
        method_config=cfg,
        alignment_dataset=[alignment_row] * 8,
    )
    with torch.no_grad():
        user_loss = model(**collate([user_row] * 4)).loss.item()
        alignment_loss = model(**collate([alignment_row] * 4)).loss.item()
    assert abs(user_loss - alignment_loss) > 1e-3  # the two data sets are distinguishable

    t.train()

    logs = [h for h in t.state.log_history if "loss" in h]
    assert [h["lisa/alignment_state"] for h in logs] == [1.0, 0.0, 0.0, 1.0, 0.0]
    for h in logs:
        expected = alignment_loss if h["lisa/alignment_state"] else user_loss
        assert abs(h["loss"] - expected) < 1e-4, h


def test_trainer_pulls_towards_the_last_weights_of_the_other_state_after_the_warmup(tmp_path):
    model = tiny()
    cfg = LisaConfig(finetune_steps=2, alignment_steps=1, proximal_weight=1.0, proximal_warmup_ratio=0.25)
    t = trainer("lisa", model, tmp_path, cfg, train_args=dict(max_steps=4))
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert [h["lisa/alignment_state"] for h in logs] == [1.0, 0.0, 0.0, 1.0]
    # 0.25 · 4 = 1: on from step 2 (step > 1), as the reference's strict comparison.
    assert ["lisa/proximal" in h for h in logs] == [False, False, True, True]
    assert logs[2]["lisa/proximal"] > 0  # step 2: pulled towards the weights at the switch (step 1)
    assert logs[3]["lisa/proximal"] == 0.0  # step 3: a switch, the anchor is the current weights
    assert "lisa/alignment_loss" in logs[0] and "lisa/finetune_loss" in logs[1]
