"""RepNoise as git-disl/Booster's rep_noise_loss computes it (exact labels): hand-worked pieces, and the
whole loss and its gradient against an independent transcription on full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _methods_support import collate, rows, tiny, trainer
from safeft.methods.repnoise import RepNoiseConfig, differing_tokens, masked_cross_entropy, mmd


def test_mmd_with_five_data_bandwidths_on_a_hand_worked_example():
    # x = {0}, y = {1}: squared distance 1, b = (1 + 1) / (2² - 2) = 1, bandwidths 1/4, 1/2, 1, 2, 4.
    # k(x,x) = k(y,y) = 5, k(x,y) = S = e^-4 + e^-2 + e^-1 + e^-1/2 + e^-1/4; MMD² = 10 - 2S.
    s = sum(math.exp(-1 / bw) for bw in (0.25, 0.5, 1, 2, 4))
    assert math.isclose(mmd(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item(), 10 - 2 * s, rel_tol=1e-6)
    x = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert mmd(x, x).abs().item() < 1e-6
    assert mmd(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0  # all rows masked away: 0, not NaN


def test_mask_is_where_the_tokens_differ_with_the_other_batch_cut_or_zero_padded():
    a = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 9]])
    b = torch.tensor([[5, 6, 1], [5, 6, 9]])
    assert differing_tokens(a, b).tolist() == [[False, False, True, True], [False, False, False, True]]
    assert differing_tokens(b, a).tolist() == [[False, False, True], [False, False, False]]
    assert differing_tokens(a, b[:1]).tolist() == [[False, False, True, True], [True, True, True, True]]


def test_masked_cross_entropy_on_a_hand_worked_example():
    # Targets at t = 1..3: token 7 (mask[1]) but mask[0] is False: the reference's zeroed logits give
    # log V; token 0 is never a target; token 3 (mask[3], mask[2]): CE(logits[2], 3). Mean over 2.
    vocabulary = 10
    logits = torch.randn(1, 4, vocabulary)
    ids = torch.tensor([[5, 7, 0, 3]])
    mask = torch.tensor([[False, True, True, True]])
    expected = (math.log(vocabulary) + F.cross_entropy(logits[0, 2:3], torch.tensor([3]))) / 2
    got = masked_cross_entropy(ids, mask, vocabulary, logits=logits)
    torch.testing.assert_close(got, expected)
    head = torch.nn.Linear(6, vocabulary, bias=False)
    hidden = torch.randn(1, 4, 6)
    torch.testing.assert_close(
        masked_cross_entropy(ids, mask, vocabulary, head=head, hidden=hidden),
        masked_cross_entropy(ids, mask, vocabulary, logits=head(hidden)),
    )


def reference_loss(model, harmful, harmless, alpha, beta, blocks, mlp_of, norm):
    """rep_noise_loss transcribed on full logits, with exact labels (hooks on the MLPs, plain tensors)."""
    activations = []
    handles = [mlp_of(b).register_forward_hook(lambda m, a, out: activations.append(out)) for b in blocks]
    out_h = model(harmful["input_ids"], attention_mask=harmful["attention_mask"], output_hidden_states=True)
    for h in handles:
        h.remove()

    def mask_between(a, b):
        padded = torch.zeros_like(a)
        rows_, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        padded[:rows_, :cols] = b[:rows_, :cols]
        return a != padded

    def ce(logits, ids, mask):
        shift_logits = logits[:, :-1] * mask[:, :-1].unsqueeze(-1)
        shift_labels = ids[:, 1:] * mask[:, 1:]
        shift_labels = shift_labels.masked_fill(shift_labels == 0, -100)
        return F.cross_entropy(shift_logits.reshape(-1, logits.shape[-1]).float(), shift_labels.reshape(-1))

    def kernel_mmd(x, y):
        total = torch.cat([x, y])
        d = torch.cdist(total, total) ** 2
        n = len(total)
        base = d.detach().sum() / (n * n - n) / 4
        k = sum(torch.exp(-d / (base * 2**i)) for i in range(5))
        m = len(x)
        return (k[:m, :m] + k[m:, m:] - k[:m, m:] - k[m:, :m]).mean()

    mask = mask_between(harmful["input_ids"], harmless["input_ids"])
    noise = 0
    for hidden in activations:
        keep = mask.unsqueeze(-1).expand(hidden.shape)
        x = hidden * keep
        g = torch.randn_like(x) * keep
        noise = noise + kernel_mmd(x.reshape(len(x), -1), g.reshape(len(g), -1))
    noise = noise / len(activations)
    harmful_losses = ce(out_h.logits, harmful["input_ids"], mask)
    head = model.get_output_embeddings()
    for h in out_h.hidden_states:
        harmful_losses = harmful_losses + ce(head(norm(h.to(torch.bfloat16))), harmful["input_ids"], mask)
    harmful_losses = harmful_losses / len(out_h.hidden_states) + 1
    out_a = model(harmless["input_ids"], attention_mask=harmless["attention_mask"])
    loss_a = ce(
        out_a.logits, harmless["input_ids"], mask_between(harmless["input_ids"], harmful["input_ids"])
    )
    terms = {"alignment_loss": loss_a, "harmful_loss": harmful_losses, "mmd": noise}
    return loss_a + beta * noise - alpha * torch.log(harmful_losses), terms


def _paired_batches():
    """Harmful and alignment rows with the same prompts and different answers (one answer longer)."""
    harmless = rows(4, seed=10)
    harmful = []
    for i, r in enumerate(rows(4, seed=11)):
        prompt = [
            t
            for t, label in zip(harmless[i]["input_ids"], harmless[i]["labels"], strict=True)
            if label == -100
        ]
        answer = r["input_ids"][: 2 + i]
        ids = prompt + answer
        harmful.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + answer}
        )
    return collate(harmful, pad_id=1), collate(harmless, pad_id=1)


@pytest.mark.parametrize("paired", [True, False])
def test_loss_and_gradient_equal_an_independent_transcription_of_the_reference(tmp_path, paired):
    alpha, beta = 0.3, 0.5  # β large enough that the MMD term shows in the gradient
    model = tiny()
    t = trainer("repnoise", model, tmp_path, RepNoiseConfig(ascent_weight=alpha, noise_weight=beta))
    harmful, harmless = (
        _paired_batches() if paired else (collate(rows(3, seed=11)), collate(rows(4, seed=10)))
    )
    t.next_batch = lambda which, size: harmful
    params = [p for p in model.parameters() if p.requires_grad]
    llama = model.base_model.model.model

    torch.manual_seed(123)
    loss = t.compute_loss(model, harmless)
    got = torch.autograd.grad(loss, params)

    torch.manual_seed(123)
    expected_loss, terms = reference_loss(
        model, harmful, harmless, alpha, beta, llama.layers, lambda b: b.mlp, llama.norm
    )
    expected = torch.autograd.grad(expected_loss, params)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)
    for name, value in terms.items():  # the logged terms are the loss's terms
        torch.testing.assert_close(t._metrics[f"repnoise/{name}"][-1], value.detach(), atol=1e-5, rtol=1e-5)
    # Every term moves the gradient: without the MMD (β = 0) or the ascent (α = 0) it differs.
    for a, b in ((alpha, 0.0), (0.0, beta)):
        torch.manual_seed(123)
        other = torch.autograd.grad(
            reference_loss(model, harmful, harmless, a, b, llama.layers, lambda b: b.mlp, llama.norm)[0],
            params,
        )
        assert max((x - y).abs().max() for x, y in zip(other, expected, strict=True)) > 1e-6


def test_partner_rows_are_the_harmful_rows_of_the_same_prompts(tmp_path):
    model = tiny()
    harmful_rows = rows(6, seed=2)
    t = trainer("repnoise", model, tmp_path, RepNoiseConfig(harmful_rows="partners"))
    t.harmful_dataset = harmful_rows
    batch = collate(rows(2, seed=3))
    batch["pair_index"] = torch.tensor([4, 1])
    got = t.harmful_batch(batch)
    torch.testing.assert_close(got["input_ids"], collate([harmful_rows[4], harmful_rows[1]])["input_ids"])
    del batch["pair_index"]
    with pytest.raises(Exception, match="pair_by_prompt"):
        t.harmful_batch(batch)


def test_repnoise_trains_on_gpt2_too(tmp_path):
    model = tiny("tiny-random-gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    t = trainer("repnoise", model, tmp_path)
    t.train()
    assert all(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if p.requires_grad)
    assert "repnoise/mmd" in t.state.log_history[0]
