"""TAR: the optimizer's gradient is the retain gradient plus the weighted first-order tamper-resistance gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from _methods_support import collate, rows, tiny, trainer
from safeft.methods.tar import TARConfig, negative_entropy, step_weight
from safeft.models import load_model


def test_step_weights_are_the_reference_schedule():
    assert step_weight(63, 64, 0.0625, "exponential") == 1.0  # the last attack step weighs most
    assert step_weight(0, 64, 0.0625, "exponential") == pytest.approx(math.exp(-0.0625 * 63))
    assert step_weight(5, 64, 0.0625, "uniform") == pytest.approx(1 / 64)


def test_negative_entropy_on_hand_worked_logits():
    uniform = torch.zeros(1, 2, 4)  # entropy log 4 at both positions
    peaked = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])  # second position: entropy ~0
    assert negative_entropy(uniform, None).item() == pytest.approx(-math.log(4))
    assert negative_entropy(peaked, None).item() == pytest.approx(-math.log(4) / 2, abs=1e-6)
    # padding (mask 0) is left out: only the uniform position counts
    assert negative_entropy(peaked, torch.tensor([[1, 0]])).item() == pytest.approx(-math.log(4))


def _outputs(model, params, batch, **kw):
    return functional_call(model, params, args=(), kwargs={**batch, **kw})


def _nonzero_adapter(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def expected_tar_gradient(model, retain, adversary, heldout, cfg, lr):
    """Retain gradient at θ + Σ_i scale_i ∇TR(θ_i), θ_i after i+1 AdamW attack steps; all by functional calls."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # the attack: AdamW on copies of θ
    attacked = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    optimizer = torch.optim.AdamW(list(attacked.values()), lr=lr, weight_decay=cfg.adversary_weight_decay)
    tamper = {n: torch.zeros_like(t) for n, t in theta.items()}
    for step, batch in enumerate(adversary):
        loss = _outputs(model, attacked, batch).loss
        grads = torch.autograd.grad(loss, [attacked[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            attacked[n].grad = g
        optimizer.step()
        scale = cfg.tamper_weight * step_weight(step, cfg.inner_steps, cfg.schedule_lambda, cfg.weighting)
        probe = {n: t.detach().clone().requires_grad_(True) for n, t in attacked.items()}
        logits = _outputs(model, probe, {k: heldout[k] for k in ("input_ids", "attention_mask")}).logits
        tr = negative_entropy(logits, heldout["attention_mask"]) * scale
        for n, g in zip(names, torch.autograd.grad(tr, [probe[n] for n in names]), strict=True):
            tamper[n] += g
    # the retain gradient at θ: NLL + mean over layers of the mean hidden-state distance to the base model
    base, _ = load_model("tiny-random-llama")
    with torch.no_grad():
        reference = base(
            input_ids=retain["input_ids"], attention_mask=retain["attention_mask"], output_hidden_states=True
        ).hidden_states
    w = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    out = _outputs(model, w, retain, output_hidden_states=True)
    distance = torch.stack(
        [(h - r).norm(dim=-1).mean() for h, r in zip(out.hidden_states, reference, strict=True)]
    ).mean()
    retain_grads = torch.autograd.grad(out.loss + distance, [w[n] for n in names])
    return {n: g + tamper[n] for n, g in zip(names, retain_grads, strict=True)}


def test_optimizer_gradient_is_retain_plus_weighted_tamper_resistance_gradients(tmp_path):
    model = tiny()
    _nonzero_adapter(model)
    cfg = TARConfig(inner_steps=3, tamper_every=1, adversary_learning_rates=[1e-2], schedule_lambda=0.5)
    t = trainer("tar", model, tmp_path, cfg)
    adversary = [collate(rows(2, seed=20 + i)) for i in range(3)]
    heldout = collate(rows(3, seed=30))
    queue = iter(adversary)
    t._rows = lambda which, size: next(queue) if which == "adversary" else heldout
    retain = collate(rows(4, seed=10))
    expected = expected_tar_gradient(model, retain, adversary, heldout, cfg, lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    t.training_step(model, retain)

    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), before[n]), n  # θ restored bit for bit after the attack
            torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-4)


def test_tamper_gradient_is_taken_every_tamper_every_steps_only(tmp_path):
    model = tiny()
    cfg = TARConfig(inner_steps=4, tamper_every=2)
    t = trainer("tar", model, tmp_path, cfg)
    probes = []
    original = t.tamper_resistance_loss
    t.tamper_resistance_loss = lambda m, b: probes.append(1) or original(m, b)
    t.training_step(model, collate(rows(4, seed=10)))
    assert len(probes) == 2  # after attack steps 2 and 4


def test_attack_learning_rates_are_drawn_from_the_set_reproducibly(tmp_path):
    t = trainer("tar", tiny(), tmp_path, TARConfig(inner_steps=1))
    rates = [t._adversary_learning_rate(attack) for attack in range(30)]
    assert set(rates) == {2e-6, 2e-5, 4e-5}
    assert rates == [t._adversary_learning_rate(attack) for attack in range(30)]
