"""`safeft data inspect`: what a source or file holds, before you train on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from safeft.data.sources import load_source, read_rows
from safeft.errors import DataError

SAMPLES = 3
_PREVIEW_CHARS = 120


def inspect_source(
    name_or_path: str,
    *,
    data_dir: str | Path | None = None,
    as_source: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Rows, fields, label balance and a few sample rows of a source (validated as `load_source` does).

    A file whose schema cannot be told (and no `as_source`) is shown as it is: its rows, each field
    with how many rows fill it, and the first rows, so that the user can pick `--as` or fix it.
    """
    try:
        records = load_source(name_or_path, data_dir=data_dir, as_source=as_source, split=split)
    except DataError as e:
        if as_source is not None or not Path(name_or_path).exists() or "cannot tell the schema" not in str(e):
            raise
        return _raw_inspection(Path(name_or_path), str(e).split(":", 1)[-1].strip())
    paths = list(dict.fromkeys(str(r.meta.get("path", "")) for r in records))
    fields: list[str] = []
    for path in paths:
        if Path(path).is_file():
            for _, row in read_rows(path):
                fields += [k for k in row if k not in fields]
                break
    return {
        "source": records[0].meta.get("source", name_or_path),
        "paths": paths,
        "rows": len(records),
        "fields": fields,
        "empty_output": sum(1 for r in records if not r.output),
        "with_input": sum(1 for r in records if r.input),
        "is_safe": _counts(r.meta.get("is_safe") for r in records),
        "label": _counts((r.output if "label" in r.meta else None) for r in records),
        "category": _counts(
            r.meta.get("category") for r in records if isinstance(r.meta.get("category"), str)
        ),
        "samples": [
            {
                "row": r.meta.get("row"),
                "instruction": r.instruction,
                "input": r.input,
                "output": r.output,
                "is_safe": r.meta.get("is_safe"),
            }
            for r in records[:SAMPLES]
        ],
    }


def _raw_inspection(path: Path, problem: str) -> dict[str, Any]:
    rows = [row for _, row in read_rows(path)]
    filled: Counter[str] = Counter()
    for row in rows:
        filled.update(k for k, v in row.items() if v not in (None, ""))
    fields = list(dict.fromkeys(k for row in rows for k in row))
    return {"source": None, "paths": [str(path)], "rows": len(rows), "fields": fields,
            "filled": {k: filled[k] for k in fields}, "raw_samples": rows[:SAMPLES], "problem": problem}  # fmt: skip


def _format_raw(info: dict[str, Any]) -> str:
    lines = [*(f"file:    {p}" for p in info["paths"]), f"rows:    {info['rows']:,}", "schema:  unknown"]
    lines.append("fields:  " + ", ".join(f"{k} ({n:,} filled)" for k, n in info["filled"].items()))
    for i, row in enumerate(info["raw_samples"], 1):
        lines.append(f"--- row {i}")
        lines += [f"  {k}: {_preview(str(v))}" for k, v in row.items()]
    lines.append(
        "to use it: name a source whose fields it has with --as SOURCE, or rename its fields to "
        "instruction/input/output or prompt/response"
    )
    return "\n".join(lines)


def _counts(values: Any) -> dict[str, int]:
    counts = Counter(str(v) for v in values if v is not None)
    return dict(counts.most_common())


def _preview(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def format_inspection(info: dict[str, Any]) -> str:
    """The report of `inspect_source` as plain text for the terminal."""
    if "raw_samples" in info:
        return _format_raw(info)
    lines = [
        f"source:  {info['source']}",
        *(f"file:    {p}" for p in info["paths"]),
        f"rows:    {info['rows']:,}",
    ]
    if info["fields"]:
        lines.append(f"fields:  {', '.join(info['fields'])}")
    lines.append(
        f"records: {info['with_input']:,} with input, {info['empty_output']:,} without output (prompt only)"
    )
    for key, title in (("is_safe", "is_safe"), ("label", "labels"), ("category", "categories")):
        counts = info[key]
        if counts:
            shown = list(counts.items())[:15]
            more = f", ... ({len(counts) - 15} more)" if len(counts) > 15 else ""
            lines.append(
                f"{title + ':':<9}"
                + ", ".join(f"{k} {v:,} ({v / info['rows']:.1%})" for k, v in shown)
                + more
            )
    for sample in info["samples"]:
        lines.append(
            f"--- row {sample['row']}"
            + (f" (is_safe={sample['is_safe']})" if sample["is_safe"] is not None else "")
        )
        lines.append(f"  instruction: {_preview(sample['instruction'])}")
        if sample["input"]:
            lines.append(f"  input:       {_preview(sample['input'])}")
        if sample["output"]:
            lines.append(f"  output:      {_preview(sample['output'])}")
    return "\n".join(lines)
