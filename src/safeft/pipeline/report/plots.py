"""The report's plots (PNG, matplotlib's Agg backend, imported only when a plot is drawn).

HS and FA against the poison ratio, one line per method with its 95% interval band; the worst case
over the attacks beside the fixed protocol, per method; the HS–FA trade-off of every attack setting;
the alignment and attack training losses. Each `figure_*` function draws a figure (the tests read its
artists back); `plot_*` / `save_and_close` write it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from safeft.pipeline.report.intervals import Estimate, estimate
from safeft.pipeline.report.results import ResultsTable
from safeft.pipeline.report.runs import NO_DEFENSE, Run, attack_key, method_order
from safeft.tables import fmt_num

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


def save_and_close(fig: Any, path: Path) -> bool:
    """Write `fig` (when there is one) as a PNG at `path` and free it; whether a file was written."""
    if fig is None:
        return False
    save_figure(fig, path)
    _pyplot().close(fig)
    return True


def _method_style(method: str, index: int) -> dict[str, Any]:
    """One colour and marker per method, the undefended model grey and dashed, in every plot alike."""
    if method == NO_DEFENSE:
        return {"color": "grey", "marker": "x", "linestyle": "--"}
    return {"color": f"C{index % 10}", "marker": MARKERS[index % len(MARKERS)], "linestyle": "-"}


MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "h")


def _interval_bounds(est: Estimate) -> tuple[float, float]:
    """(low, high) of an estimate; the value itself when no interval could be built."""
    return (est.low, est.high) if est.low is not None and est.high is not None else (est.value, est.value)


def _error_bars(estimates: tuple[Estimate, ...]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars of `estimates`: [distances below, distances above]."""
    bounds = [_interval_bounds(e) for e in estimates]
    return [
        [e.value - low for e, (low, _) in zip(estimates, bounds, strict=True)],
        [high - e.value for e, (_, high) in zip(estimates, bounds, strict=True)],
    ]


def figure_vs_poison_ratio(table: ResultsTable, metric: str) -> Any:
    """HS or FA (y) against the poison ratio (x), one line per method with its 95% interval as a band.

    The band is `intervals.estimate`'s: Wilson of the run's count with one seed, a t interval of the
    mean over seeds with several. None when no method has a number.
    """
    plt = _pyplot()
    key, label = ("hs", "harmful score (%)") if metric == "hs" else ("fa", "fine-tune accuracy (%)")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    drawn = False
    for index, row in enumerate(table.rows):
        points = [(p, e) for p in table.ratios if (e := row[f"{key}_interval"].get(p)) is not None]
        if not points:
            continue
        xs = [p for p, _ in points]
        style = _method_style(row["method"], index)
        ax.plot(xs, [e.value for _, e in points], label=row["method"], **style)
        lows, highs = zip(*(_interval_bounds(e) for _, e in points), strict=True)
        ax.fill_between(xs, lows, highs, color=style["color"], alpha=0.15, linewidth=0, label="_band")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    seeds = max((e.runs for row in table.rows for e in row[f"{key}_interval"].values() if e), default=1)
    band = "Wilson 95% interval" if seeds == 1 else "95% interval (t over seeds; Wilson for one seed)"
    ax.set_xlabel("poison ratio p")
    ax.set_ylabel(label)
    ax.set_xticks(table.ratios)
    ax.set_ylim(-2, 102)
    ax.set_title(f"{label.split(' (')[0]} vs poison ratio — {table.title}\nbands: {band}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_vs_poison_ratio(table: ResultsTable, metric: str, path: Path) -> bool:
    return save_and_close(figure_vs_poison_ratio(table, metric), path)


def figure_worst_case(rows: list[dict[str, Any]], task: str) -> Any:
    """Per method, the worst-case HS over the acceptable attacks beside its HS under the fixed protocol.

    Bars with their 95% intervals as error bars (the rows of `worst_case.worst_cases`). None when no
    method of `task` has a worst case.
    """
    plt = _pyplot()
    mine = [r for r in rows if r["task"] == task and r["hs"] is not None]
    if not mine:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(mine) + 2), 3.8))
    xs = list(range(len(mine)))
    width = 0.38
    bars = (
        ("fixed protocol", "fixed_hs", "fixed_low", "fixed_high", -width / 2, "C7"),
        ("worst case (FA kept)", "hs", "hs_low", "hs_high", width / 2, "C3"),
    )
    for label, value, low, high, shift, color in bars:
        present = [(x, r) for x, r in zip(xs, mine, strict=True) if r[value] is not None]
        if not present:
            continue
        heights = [r[value] for _, r in present]
        errors = [
            (r[value] - r[low], r[high] - r[value]) if r[low] is not None else (0.0, 0.0) for _, r in present
        ]
        ax.bar(
            [x + shift for x, _ in present],
            heights,
            width,
            yerr=list(zip(*errors, strict=True)),
            capsize=3,
            color=color,
            label=label,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels([r["method"] for r in mine], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("harmful score (%)")
    ax.set_ylim(0, 102)
    ax.set_title(
        f"Worst case over the attacks that kept the task — {task}\nerror bars: 95% intervals", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def figure_tradeoff(runs: list[Run], task: str) -> Any:
    """HS (y) against FA (x) of every attack setting of `task`: one point per method, poison ratio and
    attack setting (mean over its seeds), method = colour and marker, 95% intervals as error bars.

    None when no attacked evaluation of `task` has both numbers.
    """
    plt = _pyplot()
    attacked = [
        r
        for r in runs
        if r.kind == "evaluate" and r.done and r.labels.get("attacked") and r.labels.get("task") == task
    ]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    drawn = False
    for index, method in enumerate(method_order(attacked)):
        settings: dict[tuple[Any, ...], list[Run]] = {}
        for r in attacked:
            if r.labels.get("method") == method:
                setting = (r.labels.get("poison_ratio"), attack_key(r.labels.get("attack", {})))
                settings.setdefault(setting, []).append(r)
        points = [
            (fa, hs)
            for group in settings.values()
            if (fa := estimate(group, "fa_strict")) and (hs := estimate(group, "hs"))
        ]
        if not points:
            continue
        style = _method_style(method, index)
        fas, hss = zip(*points, strict=True)
        ax.errorbar(
            [e.value for e in fas],
            [e.value for e in hss],
            xerr=_error_bars(fas),
            yerr=_error_bars(hss),
            color=style["color"],
            marker=style["marker"],
            linestyle="none",
            capsize=2,
            alpha=0.85,
            label=method,
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("fine-tune accuracy (%)  →  the attack taught the task")
    ax.set_ylabel("harmful score (%)  →  the attack broke the defense")
    ax.set_title(
        f"HS–FA trade-off, one point per attack setting — {task}\nerror bars: 95% intervals", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(ax.containers) > 6 else 1)
    return fig


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
