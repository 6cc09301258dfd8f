"""RepNoise: the Gaussian-kernel MMD on a hand-worked example; the loss is the sum of its terms."""

from __future__ import annotations

import math

import torch

from _methods_support import collate, rows, tiny, trainer
from safeft.methods.repnoise import RepNoiseConfig, mmd


def test_mmd_on_a_hand_worked_example():
    # x = {0, 1}, y = {0, 2}, σ = 1, k(a, b) = exp(-(a-b)²/2):
    # mean k(x,x) = (2 + 2e^-0.5)/4, mean k(y,y) = (2 + 2e^-2)/4, mean k(x,y) = (1 + e^-2 + 2e^-0.5)/4
    # MMD² = (1 - e^-0.5) / 2
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    assert math.isclose(mmd(x, y, 1.0).item(), (1 - math.exp(-0.5)) / 2, rel_tol=1e-6)
    assert mmd(x, x, 1.0).item() == 0.0
    assert mmd(x, y, 1.0).item() == mmd(y, x, 1.0).item()


def _reference_mmd(x, y, sigma):
    def k(a, b):
        return torch.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)).mean()

    return k(x, x) + k(y, y) - 2 * k(x, y)


def test_loss_is_alignment_minus_ascent_plus_noise_term(tmp_path):
    alpha, beta = 0.3, 0.5
    model = tiny()
    t = trainer(
        "repnoise",
        model,
        tmp_path,
        RepNoiseConfig(ascent_weight=alpha, noise_weight=beta, mmd_max_tokens=10_000),
    )
    alignment, harmful = collate(rows(4, seed=10)), collate(rows(3, seed=11))
    t.next_batch = lambda which, size: harmful

    torch.manual_seed(123)
    loss = t.compute_loss(model, alignment)

    with torch.no_grad():
        loss_a = model(**alignment).loss
        out = model(**harmful, output_hidden_states=True)
        mask = harmful["attention_mask"].bool()
        torch.manual_seed(123)
        terms = []
        for h in out.hidden_states[1:]:
            x = h[mask]
            terms.append(_reference_mmd(x, torch.randn_like(x), math.sqrt(32)))
        noise = torch.stack(terms).mean()
    torch.testing.assert_close(loss, loss_a - alpha * out.loss + beta * noise, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t._metrics["repnoise/mmd"][-1], noise, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t._metrics["repnoise/harmful_loss"][-1], out.loss)
