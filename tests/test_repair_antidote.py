"""Antidote: the Wanda pruning rule against hand-worked tensors and against the reference's own masks.

The golden file holds a fixed two-block model whose only Linear layers are LoRA matrices, the input
of every matrix for six calibration rows, and the masks git-disl/Antidote `utils.py::prune_wanda_outlier`
@26e2ade computed on it at four dense ratios; tests/fixtures/reference/antidote.json names the command (scripts/reference_golden_antidote.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from safeft.repair.antidote import InputSquareSums, wanda_prune_mask

GOLDEN = Path(__file__).parent / "fixtures" / "reference"


def test_prunes_the_highest_wanda_scores_of_each_row():
    weight = torch.tensor([[1.0, -4.0, 2.0, 3.0], [5.0, 1.0, 1.0, 1.0]])
    # s_j = [4, 1, 1, 0.25]: sqrt = [2, 1, 1, 0.5]; scores row 0 = [2, 4, 2, 1.5], row 1 = [10, 1, 1, 0.5]
    s = torch.tensor([4.0, 1.0, 1.0, 0.25])
    # dense ratio 0.5: keep int(4 · 0.5) = 2 lowest per row, zero the other 2.
    # Row 0 ascending (stable): 1.5 (col 3), 2 (col 0), 2 (col 2), 4 (col 1) -> zero cols 2 and 1.
    # Row 1 ascending: 0.5 (3), 1 (1), 1 (2), 10 (0) -> zero cols 2 and 0.
    expected = torch.tensor([[False, True, True, False], [True, False, True, False]])
    assert torch.equal(wanda_prune_mask(weight, s, 0.5), expected)


def test_dense_ratio_sets_the_count_per_row_like_the_reference():
    weight, s = torch.randn(3, 10), torch.rand(10)
    # int(10 · (1 − 0.1)) = 9 kept -> 1 zeroed per row; int(10 · 0.7) = 7 -> 3 zeroed
    assert wanda_prune_mask(weight, s, 0.1).sum(dim=1).tolist() == [1, 1, 1]
    assert wanda_prune_mask(weight, s, 0.3).sum(dim=1).tolist() == [3, 3, 3]
    assert not wanda_prune_mask(weight, s, 0.0).any()


def test_input_statistics_skip_padding_and_average_over_rows():
    linear = nn.Linear(2, 1, bias=False)
    stats = InputSquareSums({"m": linear})
    x = torch.tensor(
        [[[1.0, 2.0], [3.0, 0.0]], [[2.0, 2.0], [99.0, 99.0]]]
    )  # row 2's second token is padding
    with stats.hooked():
        stats.token_mask = torch.tensor([[1, 1], [1, 0]])
        linear(x)
    stats.rows += 2
    # Σ x² over real tokens: col 0 = 1 + 9 + 4 = 14, col 1 = 4 + 0 + 4 = 8; over 2 rows
    torch.testing.assert_close(stats.mean("m"), torch.tensor([7.0, 4.0]))
    assert not linear._forward_hooks  # the hooks are removed


@pytest.mark.parametrize("dense_ratio", [0.1, 0.05, 0.2, 0.3])
def test_matches_the_reference_implementation(dense_ratio):
    tensors = load_file(GOLDEN / "antidote.safetensors")
    assert dense_ratio in json.loads((GOLDEN / "antidote.json").read_text())["dense_ratios"]
    lengths = tensors["lengths"].tolist()
    names = sorted(k.removeprefix("weight.") for k in tensors if k.startswith("weight."))
    linears = {}
    for name in names:
        w = tensors[f"weight.{name}"]
        linears[name] = nn.Linear(w.shape[1], w.shape[0], bias=False)
        linears[name].weight.data.copy_(w)
    stats = InputSquareSums(linears)
    # The reference saw one row at a time; here all six rows go in one right-padded batch.
    width = max(lengths)
    with torch.no_grad(), stats.hooked():
        stats.token_mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        for name, linear in linears.items():
            rows = torch.split(tensors[f"inputs.{name}"], lengths)
            batch = torch.stack([torch.cat([r, torch.full((width - len(r), r.shape[1]), 7.0)]) for r in rows])
            linear(batch)
    stats.rows = len(lengths)
    for name, linear in linears.items():
        mask = wanda_prune_mask(linear.weight, stats.mean(name), dense_ratio)
        assert torch.equal(mask, tensors[f"mask{dense_ratio}.{name}"].bool()), name
