"""A rate of the report (HS, FA) over one or several runs, with its 95% interval.

- One run: the Wilson interval of its count (e.g. 37 flagged of 300 answers), the sampling error of
  the prompts it was evaluated on (`safeft.evaluation.stats.wilson_interval`, what metrics.json's
  `hs_ci95` holds).
- Several runs (seeds of the same setting): the mean over them with a Student t interval,
  mean ± t(0.975, k - 1) · sd / √k, the spread that training randomness adds between seeds;
  clipped to [0, 100] since the rate cannot leave it.

Every interval the report prints or plots comes from `estimate`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

from safeft.evaluation.stats import CONFIDENCE, wilson_interval
from safeft.pipeline.report.runs import Run, metric
from safeft.tables import MISSING, with_interval

COUNT_OF = {"hs": "n_harmful", "fa_strict": "n_task"}  # a rate's metric name -> the count it is a % of


@dataclass(frozen=True)
class Estimate:
    """A rate in % with its 95% interval (None when the run recorded no count to build it from)."""

    value: float
    low: float | None
    high: float | None
    runs: int  # 1: Wilson interval of that run's count; > 1: t interval of the mean over the runs

    @property
    def kind(self) -> str:
        return "Wilson" if self.runs == 1 else f"t, {self.runs} seeds"


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Student t interval of the mean of `values` (at least two)."""
    if len(values) < 2:
        raise ValueError(f"t_interval: needs at least two values, got {len(values)}")
    k = len(values)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, k - 1) * statistics.stdev(values) / math.sqrt(k)
    mean = statistics.fmean(values)
    return mean - half, mean + half


def wilson_percent(value: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval, in %, of a rate `value` % of `n` items (the count is value · n / 100)."""
    low, high = wilson_interval(round(value * n / 100), n)
    return 100 * low, 100 * high


def estimate(runs: list[Run], name: str) -> Estimate | None:
    """The rate `name` ("hs" or "fa_strict") over the finished `runs` with its 95% interval (None: no value)."""
    values = [(v, r) for r in runs if r.done and (v := metric(r.metrics, name)) is not None]  # type: ignore[arg-type]
    if not values:
        return None
    if len(values) == 1:
        value, run = values[0]
        n = metric(run.metrics, COUNT_OF[name])  # type: ignore[arg-type]
        if not n:
            return Estimate(value, None, None, 1)
        return Estimate(value, *wilson_percent(value, int(n)), 1)
    rates = [v for v, _ in values]
    low, high = t_interval(rates)
    return Estimate(statistics.fmean(rates), max(0.0, low), min(100.0, high), len(rates))


def interval_cell(est: Estimate | None) -> str:
    """`value [low, high]` of an estimate, with the number of seeds when it is a mean over several."""
    if est is None:
        return MISSING
    interval = [est.low, est.high] if est.low is not None and est.high is not None else None
    return with_interval(est.value, interval) + (f" ({est.runs} seeds)" if est.runs > 1 else "")
