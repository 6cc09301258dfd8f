"""Booster: the optimizer's gradient is g_a + λ(g_h − g_h'), and w is restored bit for bit."""

from __future__ import annotations

import torch
from torch.func import functional_call

from _methods_support import (
    accumulation_matches_mean_of_micro_batch_gradients,
    assert_gradients_match,
    collate,
    rows,
    tiny,
    trainer,
)
from safeft.methods.booster import BoosterConfig

LAMBDA, ALPHA = 5.0, 0.5  # a larger α than the reference makes g_h - g_h' clearly non-zero


def _hf_loss(model, params, batch):
    """The model's own causal-LM loss (token mean over labels != -100) at `params`."""
    return functional_call(model, params, args=(), kwargs=dict(batch)).loss


def expected_booster_gradient(model, alignment, harmful, lam, alpha):
    """g_a + λ (g_h − g_h') with w' = w − α g_h / (||g_h|| + 1e-7), by explicit functional calls."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    w = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}
    g_h = torch.autograd.grad(_hf_loss(model, w, harmful), [w[n] for n in names])
    norm = torch.sqrt(sum((g**2).sum() for g in g_h))
    w_prime = {
        n: (w[n] - alpha * g / (norm + 1e-7)).detach().requires_grad_(True)
        for n, g in zip(names, g_h, strict=True)
    }
    g_h_prime = torch.autograd.grad(_hf_loss(model, w_prime, harmful), [w_prime[n] for n in names])
    g_a = torch.autograd.grad(_hf_loss(model, w, alignment), [w[n] for n in names])
    return (
        {n: ga + lam * (gh - ghp) for n, ga, gh, ghp in zip(names, g_a, g_h, g_h_prime, strict=True)},
        g_h,
        g_h_prime,
    )


def test_optimizer_gradient_is_g_a_plus_lambda_times_harmful_difference(tmp_path):
    model = tiny()
    t = trainer("booster", model, tmp_path, BoosterConfig(harmful_weight=LAMBDA, simulated_step_size=ALPHA))
    alignment, harmful = collate(rows(4, seed=10)), collate(rows(3, seed=11))
    t.next_batch = lambda which, size: harmful
    expected, g_h, g_h_prime = expected_booster_gradient(model, alignment, harmful, LAMBDA, ALPHA)
    assert max((a - b).abs().max() for a, b in zip(g_h, g_h_prime, strict=True)) > 1e-4  # the term matters

    t.training_step(model, alignment)

    assert_gradients_match(model, expected)


def test_weights_are_bit_identical_after_the_simulated_harmful_step(tmp_path):
    model = tiny()
    t = trainer("booster", model, tmp_path, BoosterConfig(simulated_step_size=ALPHA))
    t.next_batch = lambda which, size: collate(rows(3, seed=11))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    seen = []  # the weights each forward pass ran with
    model.register_forward_pre_hook(lambda m, a: seen.append([p.detach().clone() for p in params]))

    t.training_step(model, collate(rows(4, seed=10)))

    assert len(seen) == 3  # harmful at w, harmful at w', alignment at w
    assert any(not torch.equal(a, b) for a, b in zip(seen[1], before, strict=True))  # w' really differed
    assert all(torch.equal(a, b) for a, b in zip(seen[2], before, strict=True))  # alignment pass at exactly w
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))


def test_gradient_accumulation_adds_up_per_micro_batch(tmp_path):
    accumulation_matches_mean_of_micro_batch_gradients(
        "booster", BoosterConfig(simulated_step_size=ALPHA), tmp_path
    )
