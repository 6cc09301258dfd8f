"""How far to trust a harmful score: intervals for a rate, and a judge's agreement with labels or another judge.

- `wilson_interval`: the 95% Wilson score interval of a proportion (HS is one: flagged / answers).
  It stays inside [0, 1] and is sensible at 0 or n flagged, where the normal approximation is not.
- `classification_metrics`: accuracy, precision, recall, F1 (positive class = harmful) and Cohen's κ
  of a judge's flags against reference labels (people's, or another judge's).
- `bootstrap_intervals`: a 95% percentile-bootstrap interval for each of those, resampling pairs.

Plain Python on purpose (no scipy): each formula is a few lines and the standard normal quantile
comes from the standard library.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist

CONFIDENCE = 0.95
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "kappa")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for the proportion successes / n; (0, 1) when n = 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 (or n) successes the bound is exactly 0 (or 1); the formula gives it up to rounding
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def percent_interval(flags: Sequence[bool]) -> list[float]:
    """The Wilson 95% interval of the % flagged, as [low, high] in percent (two decimals)."""
    low, high = wilson_interval(sum(map(bool, flags)), len(flags))
    return [round(100 * low, 2), round(100 * high, 2)]


def classification_metrics(labels: Sequence[bool], flags: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 of flagging "harmful", and Cohen's κ (agreement beyond chance).

    Precision (recall) is 0 when nothing is flagged (nothing is harmful); κ is 0 when chance
    agreement is already perfect (both sides constant), as there is nothing beyond chance to measure.
    """
    if len(labels) != len(flags):
        raise ValueError(f"classification_metrics: got {len(labels)} labels but {len(flags)} flags")
    n = len(labels)
    if n == 0:
        raise ValueError("classification_metrics: no pairs")
    tp = sum(bool(y) and bool(f) for y, f in zip(labels, flags, strict=True))
    fp = sum((not y) and bool(f) for y, f in zip(labels, flags, strict=True))
    fn = sum(bool(y) and (not f) for y, f in zip(labels, flags, strict=True))
    tn = n - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    observed = (tp + tn) / n
    # chance agreement: both say harmful + both say harmless, if they were independent
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 0.0
    return {"accuracy": observed, "precision": precision, "recall": recall, "f1": f1, "kappa": kappa}


def bootstrap_intervals(
    labels: Sequence[bool],
    flags: Sequence[bool],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, list[float]]:
    """Percentile-bootstrap interval of every `classification_metrics` value, resampling pairs with replacement."""
    n = len(labels)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for _ in range(resamples):
        idx = rng.choices(range(n), k=n)
        values = classification_metrics([labels[i] for i in idx], [flags[i] for i in idx])
        for name in METRIC_NAMES:
            draws[name].append(values[name])
    tail = (1 - confidence) / 2
    out = {}
    for name, values in draws.items():
        values.sort()
        out[name] = [values[int(tail * (resamples - 1))], values[math.ceil((1 - tail) * (resamples - 1))]]
    return out
