"""The report of a runs folder: every table and plot written into it, and a printable summary."""

from __future__ import annotations

from pathlib import Path

from safeft.io import atomic_write_text
from safeft.pipeline.paired import (
    paired_csv,
    paired_markdown,
    paired_rows,
    pooled_csv,
    pooled_markdown,
    pooled_rows,
)
from safeft.pipeline.report.judges import judges_markdown
from safeft.pipeline.report.plots import (
    LOSS_PLOTS,
    figure_tradeoff,
    figure_worst_case,
    plot_training_loss,
    plot_vs_poison_ratio,
    save_and_close,
    slug,
)
from safeft.pipeline.report.results import results_csv, results_long_csv, results_markdown, results_tables
from safeft.pipeline.report.runs import attack_key, attack_title, collect_runs, fixed_protocol
from safeft.pipeline.report.system import system_csv, system_markdown, system_rows
from safeft.pipeline.report.worst_case import FA_TOLERANCE, worst_case_csv, worst_case_markdown, worst_cases


def write_report(runs_dir: str | Path, fa_tolerance: float = FA_TOLERANCE) -> str:
    """Write the tables and plots of a runs folder; return a printable summary."""
    runs_dir = Path(runs_dir)
    runs = collect_runs(runs_dir)
    tables = results_tables(runs)
    sys_rows = system_rows(runs)
    worst = worst_cases(runs, fa_tolerance, fixed_protocol(runs_dir))
    results_md = results_markdown(tables) if tables else "No evaluations yet.\n"
    if worst:
        results_md += "\n### Worst case over the attacks\n\n" + worst_case_markdown(worst, fa_tolerance)
    paired = [{**r, "attack": attack_title(attack_key(r["attack"]))} for r in paired_rows(runs_dir, runs)]
    pooled = pooled_rows(paired)
    if paired:
        results_md += "\n### Against SFT, prompt by prompt\n\n" + paired_markdown(paired)
        results_md += "\n### Against SFT, pooled over seeds\n\n" + pooled_markdown(pooled)
    judges_md = judges_markdown(runs)
    if judges_md:
        results_md += "\n### Every judge, with 95% intervals, and over-refusal\n\n" + judges_md
    system_md = system_markdown(sys_rows) if sys_rows else "No finished alignment runs yet.\n"
    done = sum(r.done for r in runs)
    status = f"{done} of {len(runs)} stages done" + (
        "" if done == len(runs) else " (rerun 'safeft run' to finish the rest)"
    )

    files = {
        "results.md": f"# Results: {runs_dir.name}\n\n{status}\n\n{results_md}",
        "results.csv": results_csv(tables),
        "results_long.csv": results_long_csv(runs),
        "worst_case.csv": worst_case_csv(worst),
        "paired.csv": paired_csv(paired),
        "paired_pooled.csv": pooled_csv(pooled),
        "system.md": f"# System cost: {runs_dir.name}\n\n{system_md}",
        "system.csv": system_csv(sys_rows),
    }
    for name, text in files.items():
        atomic_write_text(runs_dir / name, text)
    written = list(files)
    plots = runs_dir / "plots"
    for t in tables:
        suffix = slug(t.task + ("_" + attack_title(t.attack) if t.attack else ""))
        for metric in ("hs", "fa"):
            name = f"{metric}_vs_poison_ratio_{suffix}.png"
            if t.ratios and plot_vs_poison_ratio(t, metric, plots / name):
                written.append(f"plots/{name}")
    for task in sorted({str(r["task"]) for r in worst}):
        for name, fig in (
            (f"worst_case_{slug(task)}.png", figure_worst_case(worst, task)),
            (f"hs_fa_tradeoff_{slug(task)}.png", figure_tradeoff(runs, task)),
        ):
            if save_and_close(fig, plots / name):
                written.append(f"plots/{name}")
    for kind, (name, _) in LOSS_PLOTS.items():
        if plot_training_loss(runs, kind, plots / name):
            written.append(f"plots/{name}")
    return (
        f"Report of {runs_dir} ({status})\n\nResults\n\n{results_md}\nSystem cost of the alignment stage\n\n{system_md}\n"
        f"Written to {runs_dir}: {', '.join(written)}"
    )
