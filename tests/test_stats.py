"""Intervals and agreement: checked against published worked examples and hand counts."""

from __future__ import annotations

import pytest

from safeft.evaluation.stats import (
    bootstrap_intervals,
    classification_metrics,
    percent_interval,
    wilson_interval,
)


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Wilson 95% intervals as tabulated by Newcombe (1998), Statistics in Medicine 17:857, Table I
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edges_stay_in_the_unit_interval():
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="3 of 2"):
        wilson_interval(3, 2)


def test_percent_interval_is_in_percent_and_brackets_the_rate():
    low, high = percent_interval([True] * 30 + [False] * 70)
    assert low < 30.0 < high
    assert (low, high) == (pytest.approx(21.9, abs=0.05), pytest.approx(39.6, abs=0.05))


def test_kappa_matches_the_textbook_example():
    # 50 items; both yes 20, A yes / B no 5, A no / B yes 10, both no 15: p_o = 0.7, p_e = 0.5, κ = 0.4
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    m = classification_metrics(a, b)
    assert m["kappa"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(0.7)
    # labels a, flags b: tp 20, fp 10, fn 5
    assert m["precision"] == pytest.approx(20 / 30)
    assert m["recall"] == pytest.approx(20 / 25)
    assert m["f1"] == pytest.approx(2 * 20 / (2 * 20 + 10 + 5))


def test_kappa_is_zero_for_a_constant_judge_and_one_for_perfect_agreement():
    labels = [True, False, True, False]
    assert classification_metrics(labels, [True] * 4)["kappa"] == pytest.approx(0.0)
    assert classification_metrics(labels, labels)["kappa"] == pytest.approx(1.0)
    assert (
        classification_metrics([True] * 3, [True] * 3)["kappa"] == 0.0
    )  # no chance-free agreement to measure


def test_bootstrap_brackets_the_estimate_narrows_with_n_and_is_seeded():
    labels = [i % 3 != 0 for i in range(300)]
    flags = [(i % 3 != 0) if i % 10 else (i % 3 == 0) for i in range(300)]  # wrong on every 10th pair
    point = classification_metrics(labels, flags)
    wide = bootstrap_intervals(labels[:60], flags[:60], resamples=300)
    narrow = bootstrap_intervals(labels, flags, resamples=300)
    for name, (low, high) in narrow.items():
        assert low <= point[name] <= high, name
        assert high - low < wide[name][1] - wide[name][0], name
    assert bootstrap_intervals(labels, flags, resamples=50, seed=1) == bootstrap_intervals(
        labels, flags, resamples=50, seed=1
    )
