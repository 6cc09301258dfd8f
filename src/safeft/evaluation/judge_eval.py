"""`safeft judge eval`: how well a judge agrees with human harmful / not-harmful labels.

Any labelled file works (JSONL, JSON or CSV with a prompt, a response and a label; the field names
are options), so anyone can check a judge on their own labels. The judge's own held-out sets are
rebuilt from the data folder by name (`heldout_set`), exactly as `safeft judge train` split them.

Reported per judge: accuracy, precision, recall, F1 (harmful is the positive class) and Cohen's κ,
each with a 95% bootstrap interval over pairs (`safeft.evaluation.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeft.errors import DataError, SafeftError
from safeft.evaluation.stats import METRIC_NAMES, bootstrap_intervals, classification_metrics
from safeft.tables import markdown_table

# Label values accepted for "is this pair harmful?" (case-insensitive for text).
HARMFUL_VALUES = {"1", "true", "yes", "harmful", "unsafe"}
HARMLESS_VALUES = {"0", "false", "no", "unharmful", "harmless", "safe"}


@dataclass(frozen=True)
class LabelledPairs:
    """Prompts, responses and human labels (True = harmful) of one labelled set, and its name."""

    name: str
    prompts: list[str]
    responses: list[str]
    harmful: list[bool]


def _parse_label(value: Any, *, path: str, row: int, field: str, means_safe: bool) -> bool:
    if isinstance(value, bool):
        flag = value
    elif isinstance(value, int) and value in (0, 1):
        flag = bool(value)
    elif isinstance(value, str) and value.strip().lower() in HARMFUL_VALUES | HARMLESS_VALUES:
        flag = value.strip().lower() in HARMFUL_VALUES
    else:
        raise DataError(
            f"label {value!r} is not a yes/no value; expected true/false, 1/0, yes/no, harmful/unharmful or unsafe/safe",
            path=path,
            row=row,
            field=field,
        )
    # "unsafe"/"harmful" words always mean harmful; booleans and 0/1 are read by the field's meaning
    if isinstance(value, str) and value.strip().lower() in {
        "harmful",
        "unharmful",
        "harmless",
        "unsafe",
        "safe",
    }:
        return flag
    return not flag if means_safe else flag


def read_labelled_pairs(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    label_field: str | None = None,
    label_means_safe: bool = False,
) -> LabelledPairs:
    """The labelled pairs of a file. `label_field` defaults to `harmful` if the rows have it, else `is_safe`.

    A label field named `is_safe` (or any field with `label_means_safe`) holds True for a *harmless*
    pair. A bad row raises `DataError` naming the file, the row and the field.
    """
    from safeft.data.sources import read_rows

    path_str = str(path)
    prompts: list[str] = []
    responses: list[str] = []
    harmful: list[bool] = []
    for number, row in read_rows(path):
        if label_field is None:
            label_field = "harmful" if "harmful" in row else "is_safe" if "is_safe" in row else None
            if label_field is None:
                raise DataError(
                    f"no label field: the row has {sorted(row)}; name it with --label-field",
                    path=path_str,
                    row=number,
                )
        for field in (prompt_field, response_field):
            if not isinstance(row.get(field), str):
                got = "missing" if field not in row else f"a {type(row[field]).__name__}"
                raise DataError(f"expected text, got {got}", path=path_str, row=number, field=field)
        if label_field not in row:
            raise DataError("missing label", path=path_str, row=number, field=label_field)
        prompts.append(row[prompt_field])
        responses.append(row[response_field])
        harmful.append(
            _parse_label(
                row[label_field],
                path=path_str,
                row=number,
                field=label_field,
                means_safe=label_means_safe or label_field == "is_safe",
            )
        )
    if not prompts:
        raise DataError("no rows: the file is empty", path=path_str)
    return LabelledPairs(Path(path).name, prompts, responses, harmful)


def heldout_set(name: str, data_dir: str | Path | None = None) -> LabelledPairs:
    """One of the CPU judge's held-out sets, rebuilt from the data folder exactly as training split it."""
    from safeft.evaluation.cpu_judge import HELDOUT_SETS, held_out_pairs

    if name not in HELDOUT_SETS:
        from safeft.errors import unknown_name

        raise unknown_name("held-out set", name, HELDOUT_SETS)
    rows = held_out_pairs(data_dir)[name]
    return LabelledPairs(
        name, [r.instruction for r in rows], [r.output for r in rows], [not r.is_safe for r in rows]
    )


def judge_agreement(
    judge: Any, pairs: LabelledPairs, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Every metric of `judge` against the labels, with its bootstrap 95% interval, and the counts."""
    flags = judge.flag(pairs.prompts, pairs.responses)
    point = classification_metrics(pairs.harmful, flags)
    intervals = bootstrap_intervals(pairs.harmful, flags, resamples=resamples, seed=seed)
    return {
        "judge": judge.name,
        "judge_version": judge.version,
        "data": pairs.name,
        "n": len(flags),
        "harmful": sum(pairs.harmful),
        "flagged": sum(flags),
        **{name: {"value": round(point[name], 4), "ci95": [round(v, 4) for v in intervals[name]]} for name in METRIC_NAMES},
    }  # fmt: skip


def agreement_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per (data set, judge): each metric as `value [low, high]`."""
    header = ["data", "judge", "N (harmful)", *METRIC_NAMES]
    rows = [
        [
            r["data"],
            r["judge"],
            f"{r['n']:,} ({r['harmful']:,})",
            *(f"{r[m]['value']:.3f} [{r[m]['ci95'][0]:.3f}, {r[m]['ci95'][1]:.3f}]" for m in METRIC_NAMES),
        ]
        for r in results
    ]
    return markdown_table(header, rows)


def judge_eval_main(args: Any) -> int:
    """CLI: `safeft judge eval --data FILE... | --heldout NAME... [--judge NAME]...`."""
    from safeft.evaluation.judges import get_judge
    from safeft.io import write_json

    sets = [
        read_labelled_pairs(
            f,
            prompt_field=args.prompt_field,
            response_field=args.response_field,
            label_field=args.label_field,
            label_means_safe=args.label_means_safe,
        )
        for f in args.data or []
    ] + [heldout_set(name, args.data_dir) for name in args.heldout or []]
    if not sets:
        raise SafeftError("judge eval: give at least one --data FILE or --heldout NAME")
    judges = [get_judge(name) for name in args.judge or ["cpu", "keyword"]]
    results = [
        judge_agreement(judge, pairs, resamples=args.resamples, seed=args.seed)
        for pairs in sets
        for judge in judges
    ]
    print(agreement_table(results))
    if args.output:
        write_json(args.output, results)
        print(f"\nwritten to {args.output}")
    return 0
