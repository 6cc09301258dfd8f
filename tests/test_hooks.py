"""The hook context managers: what they add, record and restore, on plain modules with hand-made outputs."""

from __future__ import annotations

import torch
from torch import nn

from safeft.methods.hooks import add_to_outputs, capture_output_grads


class _TupleOut(nn.Module):
    """Returns (hidden, extra) like an attention module."""

    def forward(self, x):
        return 2 * x, "extra"


def test_add_to_outputs_adds_the_constant_to_tensor_and_tuple_outputs_and_removes_itself():
    linear, pair = nn.Linear(3, 3), _TupleOut()
    x = torch.randn(2, 3)
    eps_linear, eps_pair = torch.full((2, 3), 0.5), torch.arange(6.0).reshape(2, 3)
    plain = linear(x)
    with add_to_outputs([linear, pair], [eps_linear, eps_pair]):
        torch.testing.assert_close(linear(x), plain + 0.5)
        hidden, extra = pair(x)
        torch.testing.assert_close(hidden, 2 * x + eps_pair)
        assert extra == "extra"
    torch.testing.assert_close(linear(x), plain)  # removed on exit


def test_add_to_outputs_skips_none_and_adds_a_constant_without_gradient():
    linear = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    eps = torch.ones(2, 3, requires_grad=True)
    with add_to_outputs([linear], [None]):
        torch.testing.assert_close(linear(x), linear(x))
    with add_to_outputs([linear], [eps]):
        linear(x).sum().backward()
    assert eps.grad is None  # detached: the perturbation is a constant


def test_capture_output_grads_records_dl_dh():
    linear = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    with capture_output_grads([linear]) as grads:
        (3 * linear(x)).sum().backward()
    torch.testing.assert_close(grads[0], torch.full((2, 3), 3.0))
