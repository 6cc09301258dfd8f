"""The results tables: HS and FA (%) per method (rows) and poison ratio (columns), mean ± sd over seeds.

One table per task and attack setting, with the aligned model's HS / FA before any attack; as
Markdown (results.md), CSV of the means (results.csv) and one CSV row per evaluation with every
metric (results_long.csv).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from safeft.evaluation.result import COLUMNS
from safeft.pipeline.report.intervals import estimate, interval_cell
from safeft.pipeline.report.runs import Run, attack_key, attack_title, method_order, metric
from safeft.tables import csv_text, fmt_num, markdown_table, mean_or_blank, mean_sd_cell

METRICS = (*COLUMNS, "wall_time_s")  # the columns of results_long.csv after the labels


@dataclass
class ResultsTable:
    task: str
    attack: tuple[tuple[str, Any], ...]
    ratios: list[float]
    # method, hs[ratio] / fa[ratio] (lists over seeds), hs_interval[ratio] / fa_interval[ratio]
    # (`Estimate`s: the mean with its 95% interval), hs_clean, fa_clean, seeds
    rows: list[dict[str, Any]]

    @property
    def title(self) -> str:
        attack = attack_title(self.attack)
        return f"{self.task}" + (f", attack {attack}" if attack else "")


def results_tables(runs: list[Run]) -> list[ResultsTable]:
    evals = [r for r in runs if r.kind == "evaluate"]
    methods = method_order(evals)
    clean: dict[tuple[str, str], list[Run]] = defaultdict(list)  # (method, task) -> unattacked evaluations
    attacked: dict[tuple[str, tuple], list[Run]] = defaultdict(list)  # (task, attack) -> attacked evaluations
    for r in evals:
        if r.labels.get("attacked"):
            attacked[(r.labels.get("task"), attack_key(r.labels.get("attack", {})))].append(r)
        else:
            clean[(r.labels.get("method"), r.labels.get("task"))].append(r)
    groups = list(attacked) or sorted({(task, ()) for _, task in clean}, key=str)
    tables = []
    for task, attack in groups:
        group = attacked.get((task, attack), [])
        ratios = sorted({r.labels["poison_ratio"] for r in group})
        rows = []
        for m in methods:
            mine = [r for r in group if r.labels.get("method") == m]
            unattacked = clean.get((m, task), [])
            if not mine and not unattacked:
                continue
            row: dict[str, Any] = {"method": m, "hs": {}, "fa": {}, "hs_interval": {}, "fa_interval": {}}
            for p in ratios:
                at_p = [r for r in mine if r.labels["poison_ratio"] == p and r.done]
                row["hs"][p] = [metric(r.metrics, "hs") for r in at_p]  # type: ignore[arg-type]
                row["fa"][p] = [metric(r.metrics, "fa_strict") for r in at_p]  # type: ignore[arg-type]
                row["hs_interval"][p] = estimate(at_p, "hs")
                row["fa_interval"][p] = estimate(at_p, "fa_strict")
            row["hs_clean"] = [metric(r.metrics, "hs") for r in unattacked if r.done]  # type: ignore[arg-type]
            row["fa_clean"] = [metric(r.metrics, "fa_strict") for r in unattacked if r.done]  # type: ignore[arg-type]
            row["seeds"] = len({r.labels.get("seed") for r in mine if r.done}) or len(
                {r.labels.get("seed") for r in unattacked if r.done}
            )
            rows.append(row)
        tables.append(ResultsTable(task, attack, ratios, rows))
    return tables


def results_markdown(tables: list[ResultsTable]) -> str:
    parts = []
    for t in tables:
        seeds = max((r["seeds"] for r in t.rows), default=0)
        note = f" (mean ± sd over {seeds} seeds)" if seeds > 1 else ""
        header = (
            ["method", "HS not attacked"]
            + [f"HS p={fmt_num(p)}" for p in t.ratios]
            + [f"FA p={fmt_num(p)}" for p in t.ratios]
            + ["FA not attacked"]
        )
        body = [
            [r["method"], mean_sd_cell(r["hs_clean"])]
            + [mean_sd_cell(r["hs"][p]) for p in t.ratios]
            + [mean_sd_cell(r["fa"][p]) for p in t.ratios]
            + [mean_sd_cell(r["fa_clean"])]
            for r in t.rows
        ]
        parts.append(f"### Task {t.title}{note}\n\n" + markdown_table(header, body))
        if t.ratios:
            header = ["method"] + [f"{m} p={fmt_num(p)}" for m in ("HS", "FA") for p in t.ratios]
            body = [
                [r["method"]] + [interval_cell(r[f"{m}_interval"][p]) for m in ("hs", "fa") for p in t.ratios]
                for r in t.rows
            ]
            parts.append(f"With 95% intervals, {t.title}:\n\n" + markdown_table(header, body))
    legend = (
        "HS: harmful score, % of answers to harmful prompts the judge flags (lower is better). "
        "FA: fine-tune accuracy on the task, %. p: poison ratio of the attack. "
        "'not attacked': the aligned model before fine-tuning (for 'no defense': the base model). "
        "95% intervals: of one run, the Wilson interval of its count (the prompts' sampling error); "
        "of several seeds, the mean with a Student t interval over them (the training's spread too)."
    )
    return "\n\n".join(parts) + "\n\n" + legend + "\n"


def results_csv(tables: list[ResultsTable]) -> str:
    ratios = sorted({p for t in tables for p in t.ratios})
    header = (
        ["task", "attack", "method", "seeds", "hs_not_attacked"]
        + [f"hs_p{fmt_num(p)}" for p in ratios]
        + [f"fa_p{fmt_num(p)}" for p in ratios]
        + ["fa_not_attacked"]
    )
    rows = []
    for t in tables:
        for r in t.rows:
            rows.append(
                [t.task, attack_title(t.attack), r["method"], r["seeds"], mean_or_blank(r["hs_clean"])]
                + [mean_or_blank(r["hs"].get(p, [])) for p in ratios]
                + [mean_or_blank(r["fa"].get(p, [])) for p in ratios]
                + [mean_or_blank(r["fa_clean"])]
            )
    return csv_text(header, rows)


def results_long_csv(runs: list[Run]) -> str:
    header = ["id", "method", "seed", "task", "poison_ratio", "attack", "attacked", "status", *METRICS]
    rows = []
    for r in runs:
        if r.kind != "evaluate":
            continue
        lab = r.labels
        values = [metric(r.metrics or {}, k) for k in METRICS]
        rows.append(
            [
                r.id,
                lab.get("method"),
                lab.get("seed"),
                lab.get("task"),
                lab.get("poison_ratio"),
                attack_title(attack_key(lab.get("attack", {}))),
                lab.get("attacked"),
                "done" if r.done else "not done",
                *["" if v is None else v for v in values],
            ]
        )
    return csv_text(header, rows)
