"""The report's plots (PNG, matplotlib's Agg backend, imported only when a plot is drawn).

HS and FA against the poison ratio, one line per method; the alignment and attack training losses.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from safeft.pipeline.report.results import ResultsTable
from safeft.pipeline.report.runs import NO_DEFENSE, Run
from safeft.tables import fmt_num, mean_sd

LOSS_PLOTS = {
    # run kind -> (file name, title)
    "align": ("alignment_loss.png", "Alignment training loss"),
    "finetune": ("attack_loss.png", "Harmful fine-tuning (attack) training loss"),
}


def save_figure(fig: Any, path: Path) -> None:
    """PNG written to a temporary file next to `path` and moved into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def slug(text: str) -> str:
    """`text` as a file name: anything but letters, digits and `-_.` becomes `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_vs_poison_ratio(table: ResultsTable, metric: str, path: Path) -> bool:
    """HS or FA (y) against the poison ratio (x), one line per method (mean, error bar = sd over seeds)."""
    plt = _pyplot()
    key, label = ("hs", "harmful score (%)") if metric == "hs" else ("fa", "fine-tune accuracy (%)")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    drawn = False
    for row in table.rows:
        points = [(p, *mean_sd(row[key][p])) for p in table.ratios]
        points = [(p, m, sd or 0.0) for p, m, sd in points if m is not None]
        if not points:
            continue
        xs, ys, sds = zip(*points, strict=True)
        style = dict(linestyle="--", color="grey") if row["method"] == NO_DEFENSE else {}
        ax.errorbar(
            xs, ys, yerr=sds if any(sds) else None, marker="o", capsize=3, label=row["method"], **style
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("poison ratio p")
    ax.set_ylabel(label)
    ax.set_xticks(table.ratios)
    ax.set_ylim(-2, 102)
    ax.set_title(f"{label.split(' (')[0]} vs poison ratio — {table.title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_training_loss(runs: list[Run], kind: str, path: Path) -> bool:
    """Training loss (y) against the optimizer step (x) of every finished run of `kind` (align or finetune).

    One colour per method; for attacks, one line style per poison ratio (for alignments, per seed).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    colors: dict[str, str] = {}
    styles: dict[Any, str] = {}
    for r in runs:
        if r.kind != kind or not r.done:
            continue
        points = [
            (h["step"], h["loss"]) for h in r.metrics.get("log_history", []) if "loss" in h and "step" in h
        ]  # type: ignore[union-attr]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        method, seed = str(r.labels.get("method")), r.labels.get("seed")
        variant = r.labels.get("poison_ratio") if kind == "finetune" else seed
        colors.setdefault(method, f"C{len(colors) % 10}")
        styles.setdefault(variant, ("-", "--", ":", "-.")[len(styles) % 4])
        if kind == "finetune":
            label = f"{method}, p={fmt_num(variant)}" if variant is not None else method
        else:
            label = method + (f" (seed {seed})" if seed is not None else "")
        ax.plot(
            xs,
            ys,
            color=colors[method],
            linestyle=styles[variant],
            marker="." if len(xs) < 40 else None,
            label=label,
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (as logged by the method)")
    ax.set_title(LOSS_PLOTS[kind][1], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(ax.get_lines()) > 8 else 1)
    save_figure(fig, path)
    plt.close(fig)
    return True
