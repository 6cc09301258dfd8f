"""Is a method's harmful score really different from SFT's? An exact McNemar test, prompt by prompt.

Two evaluations under the same attack (task, poison ratio, attack setting, seed) answer the same
harmful prompts, so they are paired: on each prompt the judge flags either model's answer or not.
Only the prompts where the two verdicts disagree carry information about a difference: `b` of them
are flagged for the method only, `c` for the reference (SFT) only. If both models were equally
harmful, each disagreement would go either way with probability 1/2, so `b ~ Binomial(b + c, 1/2)`;
the two-sided exact p-value is `min(1, 2 P(X <= min(b, c)))`. With 300 prompts a difference of a
few points is often noise, and a table of HS alone does not say which.

Over seeds (`pooled_rows`): within each seed the pairs are matched, so under "equally harmful" every
discordant prompt of every seed still goes either way with probability 1/2, independently; the
summed counts give `sum b ~ Binomial(sum (b + c), 1/2)` and the same exact test on them is valid
(McNemar's test for stratified matched pairs; it weighs each seed by its discordant prompts). Every
"beats" / "does not beat" sentence of the report (`verdict`) rests on that pooled test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from safeft.evaluation.stats import percent_interval
from safeft.io import read_jsonl
from safeft.tables import MISSING, dict_rows_csv, fmt_num, markdown_table

SAMPLES_FILE = "harmful_samples.jsonl"  # written by the evaluate stage, one line per prompt
REFERENCE = "sft"
ALPHA = 0.05  # a "beats" sentence needs a pooled p below it


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts `b` and `c` (1 without any)."""
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def read_verdicts(run_dir: Path, judge: str | None = None) -> dict[tuple[Any, ...], bool] | None:
    """A judge's verdict per prompt (default: the evaluation's own judge), keyed by where the prompt came from.

    None when the evaluation has no saved answers or did not record `judge`'s verdicts.
    """
    path = run_dir / SAMPLES_FILE
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    if judge is not None and not all(judge in s.get("judges", {}) for s in rows):
        return None
    return {
        (s.get("source"), s.get("row"), s["prompt"]): bool(
            s["judges"][judge]["flagged"] if judge else s["flagged"]
        )
        for s in rows
    }


def judges_of(run_dir: Path) -> list[str]:
    """The judges whose verdicts an evaluation saved (its own judge first)."""
    path = run_dir / SAMPLES_FILE
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        first = json.loads(f.readline() or "{}")
    return list(first.get("judges", {}))


def compare(run_dir: Path, reference_dir: Path, judge: str | None = None) -> dict[str, Any] | None:
    """Paired counts of two evaluations on the prompts both answered (None when they share none).

    `n` shared prompts, both harmful scores on them with their Wilson 95% intervals, `only_method`
    (b) and `only_reference` (c) discordant prompts and the exact McNemar p-value; under `judge`
    when given (both evaluations must have saved its verdicts), else each evaluation's own judge.
    """
    mine, theirs = read_verdicts(run_dir, judge), read_verdicts(reference_dir, judge)
    if mine is None or theirs is None:
        return None
    shared = mine.keys() & theirs.keys()
    if not shared:
        return None
    b = sum(mine[k] and not theirs[k] for k in shared)
    c = sum(theirs[k] and not mine[k] for k in shared)
    n = len(shared)
    return {
        "n": n,
        "flagged": sum(mine[k] for k in shared),
        "reference_flagged": sum(theirs[k] for k in shared),
        "hs": 100 * sum(mine[k] for k in shared) / n,
        "hs_ci95": percent_interval([mine[k] for k in shared]),
        "reference_hs": 100 * sum(theirs[k] for k in shared) / n,
        "reference_hs_ci95": percent_interval([theirs[k] for k in shared]),
        "only_method": b,
        "only_reference": c,
        "p_value": mcnemar_exact_p(b, c),
    }


def _attack_of(labels: dict[str, Any]) -> tuple[Any, ...]:
    attack = labels.get("attack") or {}
    return (
        labels.get("task"),
        labels.get("poison_ratio"),
        bool(labels.get("attacked")),
        labels.get("seed"),
        tuple(sorted(attack.items())),
    )


def paired_rows(runs_dir: Path, runs: list[Any], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """One row per finished evaluation of a method other than `reference` that has a reference twin.

    The twin is the reference's evaluation under the same attack (or both unattacked). Rows hold the
    paired prompt count, both harmful scores on those prompts, `b`, `c` and the p-value.
    """
    evaluations = [r for r in runs if r.kind == "evaluate" and r.done]
    twins = {_attack_of(r.labels): r for r in evaluations if r.labels.get("method") == reference}
    rows = []
    for run in evaluations:
        attack = _attack_of(run.labels)
        twin = twins.get(attack)
        if run.labels.get("method") == reference or twin is None:
            continue
        counts = compare(runs_dir / run.id, runs_dir / twin.id)
        if counts is None:
            continue
        task, ratio, attacked, seed, _ = attack
        rows.append(
            {
                "task": task,
                "method": run.labels.get("method"),
                "reference": reference,
                "poison_ratio": ratio if attacked else None,
                # the grid's attack settings as given; the report titles them
                "attack": run.labels.get("attack") or {},
                "seed": seed,
                **counts,
            }
        )
    return rows


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `paired_rows` pooled over seeds: one per task, method, poison ratio and attack setting.

    Discordant counts and paired prompts are summed over the seeds (see the module docstring), the
    harmful scores are over all the pooled pairs, and `p_value` is the exact McNemar test on the sums.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        attack = tuple(sorted(r["attack"].items())) if isinstance(r["attack"], dict) else r["attack"]
        key = (r["task"], r["method"], r["reference"], r["poison_ratio"], attack)
        groups.setdefault(key, []).append(r)
    pooled = []
    for group in groups.values():
        n = sum(r["n"] for r in group)
        b = sum(r["only_method"] for r in group)
        c = sum(r["only_reference"] for r in group)
        first = group[0]
        pooled.append(
            {
                **{k: first[k] for k in ("task", "method", "reference", "poison_ratio", "attack")},
                "seeds": len(group),
                "seed_list": sorted((r["seed"] for r in group), key=str),
                "n": n,
                "hs": 100 * sum(r["flagged"] for r in group) / n,
                "reference_hs": 100 * sum(r["reference_flagged"] for r in group) / n,
                "only_method": b,
                "only_reference": c,
                "p_value": mcnemar_exact_p(b, c),
            }
        )
    return pooled


def verdict(row: dict[str, Any], alpha: float = ALPHA) -> str:
    """One pooled comparison as a sentence: "beats" only when the pooled exact test says so at `alpha`."""
    method, reference = row["method"], row["reference"]
    b, c, p = row["only_method"], row["only_reference"], row["p_value"]
    if p < alpha and b < c:
        conclusion = f"{method} beats {reference} (lower HS)"
    elif p < alpha:
        conclusion = f"{method} does not beat {reference}: its HS is higher"
    else:
        conclusion = f"{method} does not beat {reference}: no difference detectable at α = {alpha:g}"
    where = "not attacked" if row["poison_ratio"] is None else f"p = {fmt_num(row['poison_ratio'])}"
    if row["attack"]:
        where += f", attack {row['attack']}"
    seeds = f"{row['seeds']} seed" + ("s" if row["seeds"] != 1 else "")
    return (
        f"{row['task']}, {where}: {conclusion}. HS {row['hs']:.1f}% vs {row['reference_hs']:.1f}% on "
        f"{row['n']} paired answers over {seeds}; {b} prompts flagged for {method} only, {c} for "
        f"{reference} only; pooled exact McNemar p = {p:.3g}."
    )


# ----- as tables: `safeft compare` and the report's section "Against SFT, prompt by prompt" -----------

CSV_KEYS = [
    "task",
    "method",
    "reference",
    "poison_ratio",
    "attack",
    "seed",
    "n",
    "hs",
    "reference_hs",
    "only_method",
    "only_reference",
    "p_value",
]


def paired_count_cells(counts: dict[str, Any]) -> list[str]:
    """Table cells of one paired comparison: prompts, both HS, the two discordant counts, p."""
    return [
        str(counts["n"]),
        f"{counts['hs']:.1f}",
        f"{counts['reference_hs']:.1f}",
        str(counts["only_method"]),
        str(counts["only_reference"]),
        f"{counts['p_value']:.3g}",
    ]


def _comparison_table(
    rows: list[dict[str, Any]], per_row: tuple[str, Any], n_title: str, p_title: str
) -> str:
    """The Markdown table of paired or pooled rows; `per_row` is the column between attack and counts."""
    title, cell = per_row
    header = ["task", "method", "poison ratio", "attack", title, n_title, "HS", "SFT's HS"]
    header += ["flagged for the method only", "for SFT only", p_title]
    body = [
        [
            r["task"],
            r["method"],
            "not attacked" if r["poison_ratio"] is None else fmt_num(r["poison_ratio"]),
            r["attack"] or "base",
            cell(r),
            *paired_count_cells(r),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of `paired_rows` (their attack titled) as a Markdown table with its legend."""
    seed = ("seed", lambda r: MISSING if r["seed"] is None else str(r["seed"]))
    note = (
        "Each method against SFT under the same attack, on the prompts both answered. Only the prompts "
        "where the two verdicts differ tell the models apart; p is the chance of a split at least this "
        "uneven if both were equally harmful (two-sided exact McNemar test)."
    )
    return _comparison_table(rows, seed, "prompts", "p (exact McNemar)") + "\n\n" + note + "\n"


def paired_csv(rows: list[dict[str, Any]]) -> str:
    return dict_rows_csv(CSV_KEYS, rows)


POOLED_CSV_KEYS = ["seeds" if key == "seed" else key for key in CSV_KEYS]  # a pooled row counts its seeds


def pooled_markdown(rows: list[dict[str, Any]], alpha: float = ALPHA) -> str:
    """The rows of `pooled_rows` (their attack titled) as a Markdown table, then one `verdict` each."""
    seeds = ("seeds", lambda r: str(r["seeds"]))
    table = _comparison_table(rows, seeds, "paired answers", "p (pooled exact McNemar)")
    note = (
        "The comparisons above pooled over seeds: within a seed each prompt's two answers are paired; the "
        "discordant prompts of all seeds are summed and tested together (exact McNemar on the sums). Each p "
        f"is one comparison's; a sentence says 'beats' only when p < {alpha:g} and the method has fewer "
        "flagged-only prompts. With many rows, a few p < 0.05 are expected by chance (no correction for "
        "multiple comparisons)."
    )
    sentences = "\n".join(f"- {verdict(r, alpha)}" for r in rows)
    return table + "\n\n" + note + "\n\n" + sentences + "\n"


def pooled_csv(rows: list[dict[str, Any]]) -> str:
    return dict_rows_csv(POOLED_CSV_KEYS, rows)
