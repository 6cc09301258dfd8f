"""Lisa: the state alternates as a pure function of the step; the proximal term on hand-checked numbers."""

from __future__ import annotations

import torch

from _methods_support import tiny, trainer
from safeft.methods.lisa import ALIGNMENT, FINETUNE, LisaConfig, phase_at, proximal_term


def test_phase_switching_counts():
    phases = [phase_at(s, 900, 100) for s in range(2000)]
    assert phases.count(FINETUNE) == 1800 and phases.count(ALIGNMENT) == 200
    switches = [s for s in range(1, 2000) if phases[s] != phases[s - 1]]
    assert switches == [900, 1000, 1900]
    assert phases[0] == FINETUNE


def test_proximal_term_on_a_hand_checked_example():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    # ρ/2 · (1 + 4 + (3-1)²) = 0.05 · 9
    assert abs(proximal_term(params, anchor, 0.1).item() - 0.45) < 1e-7


def test_trainer_alternates_and_pulls_towards_the_last_weights_of_the_other_state(tmp_path):
    model = tiny()
    cfg = LisaConfig(finetune_steps=2, alignment_steps=1, proximal_weight=1.0, proximal_warmup_ratio=0.25)
    t = trainer("lisa", model, tmp_path, cfg, train_args=dict(max_steps=4))
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert [h["lisa/alignment_state"] for h in logs] == [0.0, 0.0, 1.0, 0.0]
    assert "lisa/proximal" not in logs[0]  # step 0 is inside the first 25% of 4 steps
    assert logs[1]["lisa/proximal"] > 0  # step 1: pulled towards the starting weights
    assert logs[2]["lisa/proximal"] == 0.0  # step 2: a switch, the anchor is the current weights
    assert logs[3]["lisa/proximal"] == 0.0  # step 3: switch back
    assert "lisa/alignment_loss" in logs[2] and "lisa/finetune_loss" in logs[3]
