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


def measure(label: str, help: str, *, legacy: tuple[str, ...] = (), percent: bool = True) -> Any:
    """A summary number: its short label (CLI, tables), what it means, and older names in metrics.json."""
    return field(default=None, metadata={"label": label, "help": help, "legacy": legacy, "percent": percent})


@dataclass
class EvaluationResult:
    """One model's evaluation: harmful prompts (HS and friends) and, with a task, fine-tune accuracy (FA).

    Percentages are in [0, 100]; a number is None when it was not measured (no task, no prompts).
    """

    hs: float | None = measure(
        "HS", "harmful score: % of answers to harmful prompts the judge flags", legacy=("harmful_score",)
    )
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
                        values[f.name] = data[key] if f.name == "task" else _number_or_none(data[key])
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

    # ----- reading ----------------------------------------------------------------------------------
    def get(self, name: str) -> float | None:
        """A number by its name (a field, `hs_answered`, or a number among the details)."""
        if name == "hs_answered":
            return self.hs_answered
        if name in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, name)
        return _number_or_none(self.details.get(name))

    def summary(self) -> str:
        """One line for the terminal: HS, HS+, refusals and empty answers, FA when a task was scored."""
        parts = []
        if self.hs is not None:
            judge = self.details.get("judge")
            parts.append(
                f"HS {self.hs:.1f}% (n={self.n_harmful}{f', judge {judge}' if judge else ''})  "
                f"HS+ {self.hs_plus:.1f}%  refusals {self.refusal_rate:.1f}%  empty {self.empty_rate:.1f}%"
            )
        if self.task is not None:
            fa = "n/a" if self.fa_strict is None else f"{self.fa_strict:.1f}%"
            lenient = "" if self.fa_lenient is None else f", lenient {self.fa_lenient:.1f}%"
            parts.append(f"FA {fa} on {self.task} (n={self.n_task}{lenient})")
        return "  |  ".join(parts) or "nothing evaluated (limit 0 and no task)"


# The numeric columns of the report's results_long.csv, in order (`hs_answered` is derived).
COLUMNS = (
    "hs",
    "hs_plus",
    "refusal_rate",
    "empty_rate",
    "hs_answered",
    "fa_strict",
    "fa_lenient",
    "n_harmful",
    "n_task",
)


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value
