"""The poisoned mix of the harmful fine-tuning attack: n rows, exactly round(p*n) of them harmful.

As in the reference experiments, the harmful rows are the first rows of the harmful pool and the
benign rows the first rows of the task data; the mix is shuffled with `random.Random(seed)`.

Rounding is half-up, `floor(p*n + 0.5)` (computed exactly, see `harmful_count`), not Python's `round` (banker's rounding, which sends 2.5
to 2 and 3.5 to 4): p=0.05, n=50 gives 3 harmful rows, p=0.1, n=25 gives 3, p=0.1, n=15 gives 2.
The reference itself truncates (`int(n*p)`); at the ratios and sizes of the papers (p*n whole)
all three agree.

The report says how many harmful prompts also occur among the evaluation prompts or in the
alignment-stage harmful pool (text compared after `normalize_text`). Such overlap inflates or
hides the harmful score; `strict=True` refuses it, `exclude_overlaps=True` skips those rows and
takes the next non-overlapping ones instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from safeft.data.records import Record
from safeft.data.sources import normalize_text
from safeft.errors import SafeftError


@dataclass
class MixReport:
    """What went into a poisoned mix and how its harmful prompts overlap other sets."""

    n: int
    poison_ratio: float
    seed: int
    n_harmful: int
    n_benign: int
    eval_overlap: int = 0  # selected harmful rows whose prompt is an evaluation prompt
    alignment_overlap: int = 0  # selected harmful rows whose prompt is in the alignment harmful pool
    excluded: int = 0  # harmful rows skipped because they overlapped (exclude_overlaps=True)
    overlapping_eval_prompts: list[str] = field(default_factory=list)
    overlapping_alignment_prompts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def harmful_count(n: int, poison_ratio: float) -> int:
    """Harmful rows in a mix of `n` at ratio `poison_ratio`: p*n rounded half-up.

    p is read as the decimal it was written as (Fraction of its repr), so float error cannot turn
    an exact half into 2.4999...: p=0.05, n=50 -> 3.
    """
    return math.floor(Fraction(repr(float(poison_ratio))) * n + Fraction(1, 2))


def prompt_text(record: Record) -> str:
    """The normalised prompt of a record (instruction, plus input when there is one)."""
    return normalize_text(record.instruction + ("\n" + record.input if record.input else ""))


def build_poisoned_mix(
    benign: list[Record],
    harmful: list[Record],
    n: int,
    poison_ratio: float,
    seed: int,
    *,
    eval_prompts: Sequence[Record] = (),
    alignment_harmful: Sequence[Record] = (),
    strict: bool = False,
    exclude_overlaps: bool = False,
) -> tuple[list[Record], MixReport]:
    """The shuffled mix and its report. Each record's meta gains `mix_role`: "harmful" or "benign"."""
    if not 0.0 <= poison_ratio <= 1.0:
        raise SafeftError(f"poison ratio must be in [0, 1], got {poison_ratio}")
    if n < 0:
        raise SafeftError(f"mix size n must be >= 0, got {n}")
    n_harmful = harmful_count(n, poison_ratio)
    n_benign = n - n_harmful

    eval_set = {prompt_text(r) for r in eval_prompts}
    alignment_set = {prompt_text(r) for r in alignment_harmful}
    chosen: list[Record] = []
    excluded = 0
    for record in harmful:
        if len(chosen) == n_harmful:
            break
        text = prompt_text(record)
        if exclude_overlaps and (text in eval_set or text in alignment_set):
            excluded += 1
            continue
        chosen.append(record)
    if len(chosen) < n_harmful:
        skipped = (
            f" after skipping {excluded} rows that overlap the evaluation prompts or the alignment pool"
            if exclude_overlaps
            else ""
        )
        raise SafeftError(
            f"the mix needs {n_harmful} harmful rows (n={n} x p={poison_ratio}), but the harmful data has only {len(chosen)}{skipped} "
            f"(of {len(harmful)} rows). Lower n or the poison ratio, or give more harmful data."
        )
    if n_benign > len(benign):
        raise SafeftError(
            f"the mix needs {n_benign} benign rows (n={n} - {n_harmful} harmful), but the task data has only {len(benign)}. "
            "Lower n or give more task data."
        )

    eval_hits = [r.instruction for r in chosen if prompt_text(r) in eval_set]
    alignment_hits = [r.instruction for r in chosen if prompt_text(r) in alignment_set]
    report = MixReport(
        n=n,
        poison_ratio=poison_ratio,
        seed=seed,
        n_harmful=n_harmful,
        n_benign=n_benign,
        eval_overlap=len(eval_hits),
        alignment_overlap=len(alignment_hits),
        excluded=excluded,
        overlapping_eval_prompts=eval_hits,
        overlapping_alignment_prompts=alignment_hits,
    )
    if strict and (eval_hits or alignment_hits):
        examples = "; ".join(repr(p[:80]) for p in (eval_hits + alignment_hits)[:3])
        raise SafeftError(
            f"{len(eval_hits)} harmful rows of the mix repeat an evaluation prompt and {len(alignment_hits)} repeat a prompt of the "
            f"alignment harmful pool (e.g. {examples}). Pass exclude_overlaps (--exclude-overlaps true) to skip them, "
            "or use disjoint data."
        )

    mix = [_tag(r, "harmful") for r in chosen] + [_tag(r, "benign") for r in benign[:n_benign]]
    random.Random(seed).shuffle(mix)
    return mix, report


def _tag(record: Record, role: str) -> Record:
    return Record(record.instruction, record.input, record.output, {**record.meta, "mix_role": role})
