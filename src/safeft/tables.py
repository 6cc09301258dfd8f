"""Tables as text: Markdown and CSV, and how a number looks in one of their cells.

Shared by the report, `safeft compare` and `safeft judge eval`; it knows nothing about runs.
"""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any

MISSING = "–"  # a cell with no number yet (a stage not done, a metric not recorded)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned (labels), the others right-aligned (numbers)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def dict_rows_csv(keys: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV of the given keys of each row, None as an empty cell."""
    return csv_text(keys, [["" if r[k] is None else r[k] for k in keys] for r in rows])


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the numbers present (sd None for fewer than two)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else None)


def mean_sd_cell(values: list[float | None], digits: int = 1) -> str:
    """`mean ± sd` over seeds (`mean` alone for one seed, MISSING for none)."""
    mean, sd = mean_sd(values)
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def mean_or_blank(values: list[float | None]) -> str:
    """The mean to 4 significant digits, or an empty CSV cell."""
    mean, _ = mean_sd(values)
    return "" if mean is None else f"{mean:.4g}"


def fmt_num(value: float) -> str:
    return f"{value:g}"


def num_or_missing(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def with_interval(value: float | None, interval: list[float] | None) -> str:
    """`value [low, high]` to one decimal (the value alone without an interval)."""
    if value is None:
        return MISSING
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else f"{value:.1f}"
