"""`safeft report RUNS_DIR`: results and system tables (Markdown + CSV) and plots of an experiment.

Reads the runs folder only (`runs.py`). Stages that are not done yet show as "–", so a report of a
half-finished experiment is fine. Files written (atomically, into the runs folder, by `write.py`):

    results.md / results.csv   HS and FA (%) per method (rows, incl. "no defense") and poison ratio
                               (columns), and the HS / FA of the aligned model before any attack;
                               one table per task and attack setting; mean ± sd over seeds, then each
                               cell with its 95% interval (results.py, intervals.py)
    results_long.csv           one row per evaluation (every seed), every metric (results.py)
    worst_case.csv             per task and method, the attack with the highest HS among those that
                               kept the method's accuracy (within --fa-tolerance of its best), with its
                               interval, beside the HS under the fixed protocol (also a section of
                               results.md; worst_case.py)
    paired.csv                 each method against SFT under the same attack and seed, prompt by prompt:
                               the prompts flagged for one only, and an exact McNemar p-value
                               (also a section of results.md; safeft.pipeline.paired)
    paired_pooled.csv          the same pooled over seeds (summed discordant counts, one exact test),
                               and in results.md one "beats" / "does not beat" sentence per row
    (results.md only)          every judge's HS with its interval, and over-refusal (judges.py)
    system.md / system.csv     alignment cost per method: seconds per step, total time, peak memory,
                               and their ratios to SFT (system.py)
    plots/*.png                HS and FA vs poison ratio per method with 95% interval bands, the
                               worst-case bar chart, the HS-FA trade-off scatter; alignment and attack
                               loss curves (plots.py; every interval from intervals.py)
"""

from safeft.pipeline.report.runs import INDEX_FILE, NO_DEFENSE, Run, collect_runs, metric
from safeft.pipeline.report.worst_case import FA_TOLERANCE
from safeft.pipeline.report.write import write_report

__all__ = ["FA_TOLERANCE", "INDEX_FILE", "NO_DEFENSE", "Run", "collect_runs", "metric", "write_report"]
