"""The system table: what each method's alignment stage costs, and its ratio to SFT's.

Seconds per step, total training time and peak memory, mean over seeds (system.md, system.csv).
"""

from __future__ import annotations

from typing import Any

from safeft.pipeline.report.runs import Run, method_order
from safeft.tables import csv_text, markdown_table, mean_sd, num_or_missing

SYSTEM_COLUMNS = (
    # (header, metrics key, digits)
    ("s/step", "seconds_per_step_median", 2),
    ("align time (s)", "train_wall_time_s", 0),
    ("peak memory (MB)", "peak_memory_mb", 0),
)


def system_rows(runs: list[Run]) -> list[dict[str, Any]]:
    aligns = [r for r in runs if r.kind == "align" and r.done]
    rows = []
    for m in method_order(aligns):
        mine = [r.metrics for r in aligns if r.labels.get("method") == m]
        row: dict[str, Any] = {
            "method": m,
            "runs": len(mine),
            "steps": mean_sd([x.get("global_step") for x in mine])[0],  # type: ignore[union-attr]
        }
        for _, key, _ in SYSTEM_COLUMNS:
            values = [x.get(key, x.get("wall_time_s") if key == "train_wall_time_s" else None) for x in mine]  # type: ignore[union-attr]
            row[key] = mean_sd(values)[0]
        # A run resumed from a checkpoint timed only the steps after it: its total is not comparable.
        row["resumed"] = any(x.get("resumed_from") for x in mine)  # type: ignore[union-attr]
        rows.append(row)
    sft = next((r for r in rows if r["method"] == "sft"), None)
    for row in rows:
        for _, key, _ in SYSTEM_COLUMNS:
            base = sft.get(key) if sft else None
            partial = key == "train_wall_time_s" and (row["resumed"] or (sft or {}).get("resumed"))
            row[f"{key}_ratio"] = row[key] / base if row[key] is not None and base and not partial else None
    return rows


def system_markdown(rows: list[dict[str, Any]]) -> str:
    header = (
        ["method", "steps"]
        + [h for h, _, _ in SYSTEM_COLUMNS]
        + [f"{h.split(' (')[0]} / SFT" for h, _, _ in SYSTEM_COLUMNS]
    )
    body = [
        [r["method"], num_or_missing(r["steps"], 0)]
        + [
            num_or_missing(r[k], d) + (" (resumed)" if r["resumed"] and k == "train_wall_time_s" else "")
            for _, k, d in SYSTEM_COLUMNS
        ]
        + [num_or_missing(r[f"{k}_ratio"], 2) for _, k, _ in SYSTEM_COLUMNS]
        for r in rows
    ]
    note = (
        "Alignment stage, mean over seeds. s/step: median seconds per optimizer step; align time: training wall time; "
        "peak memory: CUDA max allocated on GPU, process RSS on CPU (overstates multi-pass methods; see `safeft bench`)."
    )
    if any(r["resumed"] for r in rows):
        note += (
            " (resumed): the run was interrupted and resumed from a checkpoint, so its align time covers the steps "
            "after that checkpoint only; its ratio is left out."
        )
    return markdown_table(header, body) + "\n\n" + note + "\n"


def system_csv(rows: list[dict[str, Any]]) -> str:
    keys = [k for _, k, _ in SYSTEM_COLUMNS]
    header = ["method", "runs", "steps", *keys, *[f"{k}_ratio_to_sft" for k in keys], "resumed"]
    return csv_text(
        header,
        [
            [
                r["method"],
                r["runs"],
                r["steps"],
                *[r[k] for k in keys],
                *[r[f"{k}_ratio"] for k in keys],
                r["resumed"],
            ]
            for r in rows
        ],
    )
