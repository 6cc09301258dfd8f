"""Vaccine: eps_l = ρ G_l / ||G||, and the update is the gradient with that constant eps added."""

from __future__ import annotations

import torch

from _methods_support import accumulation_matches_mean_of_micro_batch_gradients, collate, rows, tiny, trainer
from safeft.methods.hooks import hook_points
from safeft.methods.vaccine import VaccineConfig, perturbation_aware_gradient

RHO = 2.0


def _attention_modules(model):
    return [layer.self_attn for layer in model.base_model.model.model.layers]  # Llama, written out


def recorded_hidden_gradients(model, batch):
    """G_l = dL/dh_l at each attention output, recorded with plain retain_grad."""
    outputs = []
    handles = [
        m.register_forward_hook(lambda m, a, out: outputs.append(out[0])) for m in _attention_modules(model)
    ]
    try:
        loss = model(**batch).loss
        for h in outputs:
            h.retain_grad()
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad()
    return [h.grad.detach().clone() for h in outputs]


def gradient_with_constant_perturbation(model, batch, eps):
    """d/dw L(w) with the attention outputs shifted by the given constants."""
    shift = iter(eps)
    handles = [
        m.register_forward_hook(lambda m, a, out: (out[0] + next(shift), *out[1:]))
        for m in _attention_modules(model)
    ]
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(model(**batch).loss, params)
    finally:
        for h in handles:
            h.remove()
    return grads


def test_perturbation_has_norm_rho_and_the_direction_of_the_hidden_gradient(tmp_path):
    model = tiny()
    t = trainer("vaccine", model, tmp_path)
    batch = collate(rows(4, seed=10))
    G = recorded_hidden_gradients(model, batch)

    result = perturbation_aware_gradient(t, model, batch, hook_points(model), RHO)

    eps = result.perturbations
    total = torch.sqrt(sum((e**2).sum() for e in eps))
    torch.testing.assert_close(total, torch.tensor(RHO))
    G_norm = torch.sqrt(sum((g**2).sum() for g in G))
    for e, g in zip(eps, G, strict=True):
        torch.testing.assert_close(e, RHO * g / G_norm, atol=1e-6, rtol=1e-4)


def test_update_gradient_is_the_gradient_with_the_perturbation_added(tmp_path):
    model = tiny()
    t = trainer("vaccine", model, tmp_path, VaccineConfig(perturbation_radius=RHO))
    batch = collate(rows(4, seed=10))
    G = recorded_hidden_gradients(model, batch)
    G_norm = torch.sqrt(sum((g**2).sum() for g in G))
    expected = gradient_with_constant_perturbation(model, batch, [RHO * g / (G_norm + 1e-7) for g in G])
    unperturbed = torch.autograd.grad(model(**batch).loss, [p for p in model.parameters() if p.requires_grad])
    assert max((a - b).abs().max() for a, b in zip(expected, unperturbed, strict=True)) > 1e-4  # eps matters

    t.training_step(model, batch)

    got = [p.grad for p in model.parameters() if p.requires_grad]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


def test_block_hook_point_perturbs_the_block_outputs(tmp_path):
    model = tiny()
    t = trainer("vaccine", model, tmp_path, VaccineConfig(hook_point="block"))
    result = perturbation_aware_gradient(t, model, collate(rows(4, seed=10)), t.points, RHO)
    blocks = t.model.base_model.model.model.layers
    assert t.points == list(blocks) and all(e.shape[-1] == 32 for e in result.perturbations)
    torch.testing.assert_close(result.perturbation_norm, torch.tensor(RHO))


def test_gradient_accumulation_adds_up_per_micro_batch(tmp_path):
    accumulation_matches_mean_of_micro_batch_gradients("vaccine", VaccineConfig(), tmp_path)


def test_first_pass_on_one_process_computes_no_parameter_gradient(tmp_path):
    """G alone is asked of autograd: no parameter's gradient is ever formed in the first pass."""
    from safeft.methods.vaccine import hidden_output_gradients

    model = tiny()
    t = trainer("vaccine", model, tmp_path)
    formed = []
    for p in model.parameters():
        if p.requires_grad:
            p.register_hook(lambda g: formed.append(1))
    loss, grads = hidden_output_gradients(t, model, collate(rows(4, seed=10)), hook_points(model))
    assert formed == [] and all(g is not None for g in grads)
