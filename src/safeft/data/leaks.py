"""Leaks between the roles of the data: a row a model was trained on that it is then scored on.

An evaluation is only meaningful on prompts the model never trained on. The evaluation stage
therefore compares what it scores with everything the evaluated model was trained on, walking
the run's chain back to its alignment: the alignment rows (and Lisa's) against the harmful
evaluation prompts, and the attack's rows against both the harmful prompts and the task's
evaluation rows. Prompts are compared after `normalize_text` (instruction plus input). Each
comparison is reported in the evaluation's `metrics.json` (`leaks`) and log; `--strict` refuses
any overlap, and any comparison that could not be made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from safeft.data.mix import prompt_text
from safeft.data.records import Record
from safeft.errors import SafeftError

log = logging.getLogger("safeft")


@dataclass
class Leak:
    """One comparison: `overlap` of the `trained` rows are also `scored` rows (None: not checked)."""

    trained: str  # e.g. "alignment rows of runs/align/sft"
    scored: str  # e.g. "harmful evaluation prompts"
    overlap: int | None
    trained_rows: int = 0
    examples: list[str] = field(default_factory=list)
    not_checked: str | None = None  # why the trained rows could not be read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.overlap is None:
            return f"{self.trained} vs {self.scored}: not checked ({self.not_checked})"
        shown = f" (e.g. {'; '.join(repr(e[:80]) for e in self.examples[:2])})" if self.examples else ""
        return f"{self.trained} vs {self.scored}: {self.overlap} of {self.trained_rows} rows overlap{shown}"


def compare(
    trained: str, load: Callable[[], Sequence[Record]], scored: str, held_out: Sequence[Record]
) -> Leak:
    """How many rows `load()` returns whose prompt is also a prompt of `held_out`."""
    try:
        rows = load()
    except SafeftError as e:
        return Leak(trained, scored, None, not_checked=str(e))
    prompts = {prompt_text(r) for r in held_out}
    hits = [r.instruction for r in rows if prompt_text(r) in prompts]
    return Leak(trained, scored, len(hits), len(rows), hits[:5])


def report_leaks(leaks: list[Leak], strict: bool) -> None:
    """Log every comparison; under `strict`, refuse any overlap or any comparison not made."""
    for leak in leaks:
        if leak.overlap:
            log.warning("data leak: %s", leak.describe())
        else:
            log.info("leak check: %s", leak.describe())
    bad = [leak for leak in leaks if leak.overlap or leak.overlap is None]
    if strict and bad:
        raise SafeftError(
            "--strict: the evaluation would score rows the model was trained on, or could not check: "
            + "; ".join(leak.describe() for leak in bad)
            + ". Use disjoint data (or drop --strict to evaluate anyway; the overlap is reported in metrics.json)."
        )
