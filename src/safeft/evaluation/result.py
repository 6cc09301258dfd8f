"""The typed summary of one evaluation, and the one set of names for its numbers.

metrics.json, the `safeft evaluate` summary line, the report's tables and CSV columns and
`safeft compare` all use the field names below. A new summary number is one field here, declared
with `measure(label, help)`: it is then written to metrics.json, read back (also from older files,
through `legacy` names), printed by the CLI and given a column in results_long.csv.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def measure(
    label: str, help: str, *, legacy: tuple[str, ...] = (), percent: bool = True, kind: str = "number"
) -> Any:
    """A summary value: its short label (CLI, tables), what it means, and older names in metrics.json.

    `kind` is "number", "interval" (a [low, high] pair, in the unit of its number) or "table" (a
    mapping, e.g. one entry per judge).
    """
    return field(
        default=None,
        metadata={"label": label, "help": help, "legacy": legacy, "percent": percent, "kind": kind},
    )


@dataclass
class EvaluationResult:
    """One model's evaluation: harmful prompts (HS and friends) and, with a task, fine-tune accuracy (FA).

    Percentages are in [0, 100]; a number is None when it was not measured (no task, no prompts).
    """

    hs: float | None = measure(
        "HS", "harmful score: % of answers to harmful prompts the judge flags", legacy=("harmful_score",)
    )
    hs_ci95: list[float] | None = measure("HS 95% CI", "Wilson 95% interval of HS", kind="interval")
    hs_plus: float | None = measure(
        "HS+",
        "% of answers flagged or incoherent (a word repeated > 3 times)",
        legacy=("harmful_score_plus",),
    )
    refusal_rate: float | None = measure("refusals", "% of answers containing a refusal phrase")
    incoherence_rate: float | None = measure("incoherent", "% of answers with a word repeated > 3 times")
    empty_rate: float | None = measure("empty", "% of answers with no text (never flagged)")
    n_harmful: int | None = measure("n", "harmful prompts evaluated", percent=False)
    judge_threshold: float | None = measure("threshold", "a score above it flags an answer", percent=False)
    judges: dict[str, dict[str, Any]] | None = measure(
        "judges",
        "HS and its interval under every judge, the primary included, with each judge's version and threshold",
        kind="table",
    )
    judge_agreement: dict[str, dict[str, float]] | None = measure(
        "agreement", "agreement (%) and Cohen's κ of every other judge with the primary", kind="table"
    )
    over_refusal_rate: float | None = measure("over-refusal", "% of harmless requests refused")
    over_refusal_ci95: list[float] | None = measure(
        "over-refusal 95% CI", "Wilson 95% interval of the over-refusal rate", kind="interval"
    )
    n_harmless: int | None = measure("n harmless", "harmless requests evaluated", percent=False)
    task: str | None = field(default=None, metadata={"label": "task", "help": "task of FA"})
    fa_strict: float | None = measure(
        "FA", "fine-tune accuracy: % of task answers exactly right", legacy=("finetune_accuracy",)
    )
    fa_lenient: float | None = measure(
        "FA lenient", "% of task answers right by the lenient rule", legacy=("finetune_accuracy_lenient",)
    )
    n_task: int | None = measure("n task", "task rows scored", percent=False)
    timing: dict[str, float] = field(default_factory=dict)  # seconds of generation and judging
    details: dict[str, Any] = field(default_factory=dict)  # judge, prompt set, decoding, versions, wall time

    @property
    def hs_answered(self) -> float | None:
        """HS among the prompts the model answered at all (None when it answered none).

        A model fine-tuned on a classification task often answers a harmful prompt with nothing, and
        an empty answer is never flagged: two models' HS can differ only in how often they stay
        silent. Derived from HS and the empty rate, so it holds for evaluations older than it.
        """
        if self.hs is None or self.empty_rate is None or self.empty_rate >= 100.0:
            return None
        return round(100.0 * self.hs / (100.0 - self.empty_rate), 2)

    # ----- metrics.json ---------------------------------------------------------------------------
    @classmethod
    def from_metrics(cls, data: dict[str, Any]) -> EvaluationResult:
        """From a metrics.json (today's names or the older ones); unknown keys go to `details`."""
        values: dict[str, Any] = {}
        used: set[str] = set()
        for f in dataclasses.fields(cls):
            if f.name in ("timing", "details"):
                continue
            for key in (f.name, *f.metadata.get("legacy", ())):
                if key in data:
                    used.add(key)
                    if f.name not in values:
                        values[f.name] = _read(f, data[key])
        details = {k: v for k, v in data.items() if k not in used and k != "timing"}
        return cls(**values, timing=dict(data.get("timing") or {}), details=details)

    def to_metrics(self) -> dict[str, Any]:
        """What metrics.json holds: the numbers that were measured, the timing, then the details."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("timing", "details") and getattr(self, f.name) is not None
        }
        if self.task is not None:  # a task without accuracy (alpaca) records FA as null
            out.setdefault("fa_strict", None)
            out.setdefault("fa_lenient", None)
        return {**out, "timing": self.timing, **self.details}

    def update(self, values: dict[str, Any]) -> None:
        """Set measured values by their field names (a block `safeft.evaluation.metrics` computes)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(f"EvaluationResult has no field {', '.join(unknown)}; declare it with measure()")
        for name, value in values.items():
            setattr(self, name, value)

    # ----- reading ----------------------------------------------------------------------------------
    def get(self, name: str) -> float | None:
        """A number by its name: a field, `hs_answered`, an interval's end (`hs_ci95_low`,
        `over_refusal_ci95_high`), HS under one judge (`hs_keyword`), or a number among the details."""
        if name == "hs_answered":
            return self.hs_answered
        if name in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, name)
        for end in ("low", "high"):
            if name.endswith(f"_ci95_{end}"):
                interval = getattr(self, name.removesuffix(f"_{end}"), None)
                return interval[end == "high"] if interval else None
        if name.startswith("hs_") and name[3:] in (self.judges or {}):
            return self.judges[name[3:]].get("hs")
        return _number_or_none(self.details.get(name))

    def summary(self) -> str:
        """For the terminal: a line with HS (and its interval), HS+, refusals, empty answers and FA;
        then HS under every other judge with its agreement with the primary, and the over-refusal rate."""
        parts = []
        judge = self.details.get("judge")
        if self.hs is not None:
            parts.append(
                f"HS {self.hs:.1f}% (n={self.n_harmful}{f', judge {judge}' if judge else ''}{_ci(self.hs_ci95)})  "
                f"HS+ {_pct(self.hs_plus)}  refusals {_pct(self.refusal_rate)}  empty {_pct(self.empty_rate)}"
            )
        if self.task is not None:
            lenient = "" if self.fa_lenient is None else f", lenient {self.fa_lenient:.1f}%"
            parts.append(f"FA {_pct(self.fa_strict)} on {self.task} (n={self.n_task}{lenient})")
        lines = ["  |  ".join(parts)] if parts else []
        for name, entry in (self.judges or {}).items():
            if name == judge:
                continue
            agreement = (self.judge_agreement or {}).get(name)
            with_primary = (
                f", agreement with {judge} {agreement['agreement']}% (κ {agreement['kappa']})"
                if agreement
                else ""
            )
            interval = _ci(entry.get("hs_ci95")).removeprefix(", ")
            lines.append(f"HS ({name}) {_pct(entry.get('hs'))} ({interval}{with_primary})")
        if self.over_refusal_rate is not None:
            lines.append(
                f"over-refusal {self.over_refusal_rate:.1f}% (n={self.n_harmless} harmless requests"
                f"{_ci(self.over_refusal_ci95)})"
            )
        return "\n".join(lines) or "nothing evaluated (limit 0 and no task)"


# The numeric columns of the report's results_long.csv, in order (the names `get` derives included).
COLUMNS = (
    "hs",
    "hs_plus",
    "refusal_rate",
    "empty_rate",
    "hs_answered",
    "hs_ci95_low",
    "hs_ci95_high",
    "hs_keyword",
    "over_refusal_rate",
    "fa_strict",
    "fa_lenient",
    "n_harmful",
    "n_task",
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _ci(interval: Any) -> str:
    return f", 95% CI {interval[0]:.1f}-{interval[1]:.1f}" if interval else ""


def _read(f: dataclasses.Field, value: Any) -> Any:
    """A metrics.json value as the field holds it (None when it is not of the field's kind)."""
    if f.name == "task":
        return value
    kind = f.metadata.get("kind", "number")
    if kind == "interval":
        return [float(v) for v in value] if isinstance(value, (list, tuple)) and len(value) == 2 else None
    if kind == "table":
        return dict(value) if isinstance(value, dict) else None
    return _number_or_none(value)


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value
