"""The seeded batch streams of a method's extra data (harmful / alignment rows)."""

from __future__ import annotations

import pytest

from safeft.errors import SafeftError
from safeft.methods.base import _IndexStream


def test_each_epoch_is_a_permutation_and_a_single_row_repeats():
    stream = _IndexStream(5, batch_size=5, seed=3)
    assert sorted(stream.next()) == [0, 1, 2, 3, 4] and sorted(stream.next()) == [0, 1, 2, 3, 4]
    assert _IndexStream(1, batch_size=3, seed=0).next() == [0, 0, 0]
    with pytest.raises(SafeftError, match="empty"):
        _IndexStream(0, batch_size=1, seed=0)


def test_processes_see_disjoint_slices_of_the_single_process_sequence():
    single = _IndexStream(10, batch_size=4, seed=1)
    ranks = [_IndexStream(10, batch_size=2, seed=1, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        assert single.next() == ranks[0].next() + ranks[1].next()
