"""Every finished evaluation's HS under each of its judges, their agreement and its over-refusal."""

from __future__ import annotations

from typing import Any

from safeft.pipeline.report.runs import Run
from safeft.tables import MISSING, markdown_table, with_interval


def judges_markdown(runs: list[Run]) -> str:
    """Every finished evaluation's HS under each of its judges and its over-refusal, with 95% intervals.

    Empty when no evaluation recorded several judges or an over-refusal rate (runs from before them).
    """
    evals = [r for r in runs if r.kind == "evaluate" and r.done and r.metrics]
    judges = sorted({name for r in evals for name in r.metrics.get("judges", {})})  # type: ignore[union-attr]
    if not judges and not any("over_refusal_rate" in r.metrics for r in evals):  # type: ignore[operator]
        return ""
    header = ["evaluation", *(f"HS ({name})" for name in judges), "agreement (κ)", "over-refusal"]
    rows = []
    for r in evals:
        m: dict[str, Any] = r.metrics  # type: ignore[assignment]
        cells = [r.id]
        for name in judges:
            entry = m.get("judges", {}).get(name, {})
            cells.append(with_interval(entry.get("hs"), entry.get("hs_ci95")))
        agreement = "; ".join(
            f"{name} {a['agreement']:.0f}% ({a['kappa']:.2f})"
            for name, a in m.get("judge_agreement", {}).items()
        )
        cells.append(agreement or MISSING)
        cells.append(with_interval(m.get("over_refusal_rate"), m.get("over_refusal_ci95")))
        rows.append(cells)
    legend = (
        "HS under each judge, [95% Wilson interval]; agreement: % of answers on which a judge agrees with the "
        "evaluation's own judge, (Cohen's κ); over-refusal: % of harmless requests refused [95% Wilson interval]."
    )
    return markdown_table(header, rows) + "\n\n" + legend + "\n"
