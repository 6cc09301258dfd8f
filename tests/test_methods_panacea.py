"""Panacea: the optimizer's gradient is ∇f(w) − λ(∇h(w + ε) − ∇h(w)), and the last ε is added after training."""

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
from safeft.methods.panacea import PanaceaConfig

LAMBDA, RHO = 0.5, 1.0  # a larger λ than the reference makes the harmful term clearly non-zero


def _loss(model, params, batch):
    """The model's own causal-LM loss (token mean over labels != -100) at `params`."""
    return functional_call(model, params, args=(), kwargs=dict(batch)).loss


def _trainable(model):
    return {
        n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad
    }


def expected_epsilon(model, harmful, rho):
    """ε = ρ ∇h(w) / (‖∇h(w)‖ + 1e-7), by an explicit functional call."""
    w = _trainable(model)
    g_h = dict(zip(w, torch.autograd.grad(_loss(model, w, harmful), list(w.values())), strict=True))
    norm = torch.sqrt(sum((g**2).sum() for g in g_h.values()))
    return {n: rho * g / (norm + 1e-7) for n, g in g_h.items()}, g_h


def expected_gradient(model, user, harmful, lam, rho, cap):
    w = _trainable(model)
    g_f = dict(zip(w, torch.autograd.grad(_loss(model, w, user), list(w.values())), strict=True))
    eps, g_h = expected_epsilon(model, harmful, rho)
    w_eps = {n: (w[n] + eps[n]).detach().requires_grad_(True) for n in w}
    h_eps = torch.clamp(_loss(model, w_eps, harmful), max=cap)
    g_h_eps = torch.autograd.grad(h_eps, list(w_eps.values()), allow_unused=True)
    g_h_eps = {n: torch.zeros_like(w[n]) if g is None else g for n, g in zip(w, g_h_eps, strict=True)}
    return {n: g_f[n] - lam * (g_h_eps[n] - g_h[n]) for n in w}, g_h, g_h_eps


def test_optimizer_gradient_is_grad_f_minus_lambda_times_the_harmful_difference(tmp_path):
    model = tiny()
    # The random tiny model's harmful loss (~10) is above the reference cap of 5: raise the cap so
    # that the clamp does not flatten the term (the next test covers the flat case).
    config = PanaceaConfig(harmful_weight=LAMBDA, perturbation_radius=RHO, harmful_loss_cap=100.0)
    t = trainer("panacea", model, tmp_path, config)
    user, harmful = collate(rows(4, seed=10)), collate(rows(3, seed=11))
    t.next_batch = lambda which, size: harmful
    expected, g_h, g_h_eps = expected_gradient(model, user, harmful, LAMBDA, RHO, cap=100.0)
    assert all(g.abs().max() > 0 for g in g_h_eps.values())
    assert max((g_h[n] - g_h_eps[n]).abs().max() for n in g_h) > 1e-4  # the term matters

    t.training_step(model, user)

    assert_gradients_match(model, expected)


def test_a_harmful_loss_above_the_cap_has_no_gradient(tmp_path):
    """With the cap below h(w + ε), the clamp is flat: the gradient is ∇f(w) + λ∇h(w)."""
    model = tiny()
    t = trainer("panacea", model, tmp_path, PanaceaConfig(harmful_weight=LAMBDA, harmful_loss_cap=0.1))
    user, harmful = collate(rows(4, seed=10)), collate(rows(3, seed=11))
    t.next_batch = lambda which, size: harmful
    w = _trainable(model)
    g_f = torch.autograd.grad(_loss(model, w, user), list(w.values()))
    g_h = torch.autograd.grad(_loss(model, w, harmful), list(w.values()))

    t.training_step(model, user)

    grads = [p.grad for p in model.parameters() if p.requires_grad]
    for got, f, h in zip(grads, g_f, g_h, strict=True):
        torch.testing.assert_close(got, f + LAMBDA * h, atol=1e-5, rtol=1e-4)


def test_weights_are_bit_identical_after_the_perturbed_pass(tmp_path):
    model = tiny()
    t = trainer("panacea", model, tmp_path)
    t.next_batch = lambda which, size: collate(rows(3, seed=11))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    t.training_step(model, collate(rows(4, seed=10)))
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))


def test_the_last_steps_epsilon_is_added_after_training(tmp_path):
    """Learning rate 0: the released weights are the initial ones plus ε of the last step's harmful batch."""
    model = tiny()
    t = trainer("panacea", model, tmp_path, train_args=dict(max_steps=2, learning_rate=0.0))
    harmful_batches = []
    original = t.next_batch
    t.next_batch = lambda which, size: harmful_batches.append(original(which, size)) or harmful_batches[-1]
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    t.train()

    eps, _ = expected_epsilon_at(model, initial, harmful_batches[-1])
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), initial[n] + eps[n], atol=1e-6, rtol=1e-5)


def expected_epsilon_at(model, weights, harmful):
    w = {n: v.clone().requires_grad_(True) for n, v in weights.items()}
    g = torch.autograd.grad(_loss(model, w, harmful), list(w.values()))
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    return {n: RHO * x / (norm + 1e-7) for n, x in zip(w, g, strict=True)}, g


def test_epsilon_is_saved_with_each_checkpoint_and_restored_on_resume(tmp_path):
    model = tiny()
    t = trainer("panacea", model, tmp_path, train_args=dict(max_steps=2, save_strategy="steps", save_steps=2))
    t.train()

    resumed = trainer("panacea", tiny(), tmp_path, train_args=dict(max_steps=2))
    resumed._load_rng_state(str(tmp_path / "checkpoint-2"))  # what Trainer calls when it resumes

    assert resumed.epsilon is not None
    for got, saved in zip(resumed.epsilon, t.epsilon, strict=True):
        assert torch.equal(got, saved)


def test_gradient_accumulation_adds_up_per_micro_batch(tmp_path):
    # ε is not added at the end: the helper compares against gradients taken at the trained weights.
    config = PanaceaConfig(harmful_weight=LAMBDA, harmful_loss_cap=100.0, add_perturbation=False)
    accumulation_matches_mean_of_micro_batch_gradients("panacea", config, tmp_path)
