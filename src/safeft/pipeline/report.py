"""`safeft report RUNS_DIR`: results and system tables (Markdown + CSV) and plots of an experiment.

Reads the runs folder only: `experiment.json` (written by `safeft run`) names each stage and its
place in the grid; without it (run directories made by hand with `safeft align/finetune/evaluate`)
the grid labels are recovered from each run's manifest and config. Stages that are not done yet
show as "–", so a report of a half-finished experiment is fine.

Files written (atomically, into the runs folder):

    results.md / results.csv   HS and FA (%) per method (rows, incl. "no defense") and poison ratio
                               (columns), and the HS / FA of the aligned model before any attack;
                               one table per task and attack setting; mean ± sd over seeds
    results_long.csv           one row per evaluation (every seed), every metric
    worst_case.csv             per task and method, the attack with the highest HS among those that
                               kept the task's accuracy (also a section of results.md)
    paired.csv                 each method against SFT under the same attack, prompt by prompt:
                               the prompts flagged for one only, and an exact McNemar p-value
                               (also a section of results.md; see safeft.pipeline.paired)
    system.md / system.csv     alignment cost per method: seconds per step, total time, peak memory,
                               and their ratios to SFT
    plots/*.png                HS and FA vs poison ratio per method; alignment and attack loss curves
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safeft.errors import SafeftError
from safeft.evaluation.result import COLUMNS, EvaluationResult
from safeft.io import atomic_write_text, read_json
from safeft.pipeline.paired import paired_rows

NO_DEFENSE = "no defense"
INDEX_FILE = "experiment.json"
MISSING = "–"
METRICS = (*COLUMNS, "wall_time_s")  # the columns of results_long.csv after the labels


@dataclass
class Run:
    """One stage's run directory with its grid labels and, when it is done, its metrics."""

    id: str
    kind: str
    labels: dict[str, Any]
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.metrics is not None


# ----- reading the runs folder --------------------------------------------------------------------


def _load_metrics(path: Path) -> dict[str, Any] | None:
    try:
        manifest = read_json(path / "manifest.json")
        if manifest.get("status") != "done":
            return None
        return read_json(path / "metrics.json")
    except (OSError, ValueError):
        return None


def _runs_from_index(runs_dir: Path, index: dict[str, Any]) -> list[Run]:
    return [Run(s["id"], s["kind"], s["labels"], _load_metrics(runs_dir / s["id"])) for s in index["stages"]]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _runs_from_manifests(runs_dir: Path) -> list[Run]:
    """Without experiment.json: labels from each run's manifest and config, following `parent` links."""
    info: dict[
        str, tuple[str, dict[str, Any], dict[str, Any], Path]
    ] = {}  # resolved path -> (kind, manifest, config, path)
    for manifest_path in sorted(runs_dir.glob("**/manifest.json")):
        run_path = manifest_path.parent
        if run_path.is_symlink():  # the old name of a folder adopted under today's fingerprint
            continue
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError):
            continue
        info[str(run_path.resolve())] = (
            manifest.get("stage", ""),
            manifest,
            _read_yaml(run_path / "config.yaml"),
            run_path,
        )

    def labels_of(key: str) -> dict[str, Any]:
        kind, manifest, config, _ = info[key]
        seed = (config.get("train") or {}).get("seed")
        if kind == "align":
            return {"method": manifest.get("method", config.get("method", "?")), "seed": seed}
        if kind == "finetune":
            method = manifest.get("alignment_method") or NO_DEFENSE if config.get("from_run") else NO_DEFENSE
            return {
                "method": method,
                "seed": seed,
                "task": config.get("task"),
                "poison_ratio": config.get("poison_ratio"),
                "attack": {},
                "attacked": True,
            }
        parent = manifest.get("parent")
        if kind == "repair" and parent and str(Path(parent).resolve()) in info:
            up = labels_of(str(Path(parent).resolve()))
            return {
                **up,
                "method": f"{up['method']} + {manifest.get('method')}",
                "repair": manifest.get("method"),
            }
        if parent and str(Path(parent).resolve()) in info:
            up = labels_of(str(Path(parent).resolve()))
            attacked = info[str(Path(parent).resolve())][0] in ("finetune", "repair")
            return {
                **up,
                "task": config.get("task") or up.get("task"),
                "poison_ratio": up.get("poison_ratio"),
                "attack": up.get("attack", {}),
                "attacked": attacked,
            }
        return {
            "method": NO_DEFENSE,
            "seed": None,
            "task": config.get("task"),
            "poison_ratio": None,
            "attack": {},
            "attacked": False,
        }

    runs = []
    for key, (kind, _, _, path) in info.items():
        if kind in ("align", "finetune", "repair", "evaluate"):
            runs.append(Run(str(path.relative_to(runs_dir)), kind, labels_of(key), _load_metrics(path)))
    return runs


def collect_runs(runs_dir: str | Path) -> list[Run]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SafeftError(
            f"runs folder {runs_dir} does not exist. Pass the output folder of 'safeft run' (e.g. runs/<experiment name>)."
        )
    index_path = runs_dir / INDEX_FILE
    runs = (
        _runs_from_index(runs_dir, read_json(index_path))
        if index_path.is_file()
        else _runs_from_manifests(runs_dir)
    )
    if not runs:
        raise SafeftError(
            f"runs folder {runs_dir} holds no run directories (no experiment.json and no */manifest.json)."
        )
    return runs


# ----- numbers ------------------------------------------------------------------------------------


def metric(metrics: dict[str, Any], name: str) -> float | None:
    """A number of an evaluation's metrics.json by its `EvaluationResult` name (None when absent)."""
    return EvaluationResult.from_metrics(metrics).get(name)


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: list[float | None], digits: int = 1) -> str:
    mean, sd = _mean_sd(values)  # type: ignore[arg-type]
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _fmt_num(value: float) -> str:
    return f"{value:g}"


def _attack_key(attack: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((attack or {}).items()))


def _attack_title(key: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) if key else ""


def _method_order(runs: list[Run]) -> list[str]:
    order: list[str] = []
    for r in runs:
        m = r.labels.get("method")
        if m is not None and m not in order:
            order.append(m)
    return sorted(order, key=lambda m: m != NO_DEFENSE)  # the undefended reference first, then grid order


# ----- results table ------------------------------------------------------------------------------


@dataclass
class ResultsTable:
    task: str
    attack: tuple[tuple[str, Any], ...]
    ratios: list[float]
    rows: list[dict[str, Any]]  # method, hs[ratio] / fa[ratio] (lists over seeds), hs_clean, fa_clean

    @property
    def title(self) -> str:
        attack = _attack_title(self.attack)
        return f"{self.task}" + (f", attack {attack}" if attack else "")


def results_tables(runs: list[Run]) -> list[ResultsTable]:
    evals = [r for r in runs if r.kind == "evaluate"]
    methods = _method_order(evals)
    clean: dict[tuple[str, str], list[Run]] = defaultdict(list)  # (method, task) -> unattacked evaluations
    attacked: dict[tuple[str, tuple], list[Run]] = defaultdict(list)  # (task, attack) -> attacked evaluations
    for r in evals:
        if r.labels.get("attacked"):
            attacked[(r.labels.get("task"), _attack_key(r.labels.get("attack", {})))].append(r)
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
            row: dict[str, Any] = {"method": m, "hs": {}, "fa": {}}
            for p in ratios:
                at_p = [r for r in mine if r.labels["poison_ratio"] == p and r.done]
                row["hs"][p] = [metric(r.metrics, "hs") for r in at_p]  # type: ignore[union-attr]
                row["fa"][p] = [metric(r.metrics, "fa_strict") for r in at_p]  # type: ignore[union-attr]
            row["hs_clean"] = [metric(r.metrics, "hs") for r in unattacked if r.done]  # type: ignore[union-attr]
            row["fa_clean"] = [metric(r.metrics, "fa_strict") for r in unattacked if r.done]  # type: ignore[union-attr]
            row["seeds"] = len({r.labels.get("seed") for r in mine if r.done}) or len(
                {r.labels.get("seed") for r in unattacked if r.done}
            )
            rows.append(row)
        tables.append(ResultsTable(task, attack, ratios, rows))
    return tables


def _results_header(t: ResultsTable) -> list[str]:
    return (
        ["method", "HS not attacked"]
        + [f"HS p={_fmt_num(p)}" for p in t.ratios]
        + [f"FA p={_fmt_num(p)}" for p in t.ratios]
        + ["FA not attacked"]
    )


def _results_cells(t: ResultsTable, row: dict[str, Any]) -> list[str]:
    return (
        [row["method"], _cell(row["hs_clean"])]
        + [_cell(row["hs"][p]) for p in t.ratios]
        + [_cell(row["fa"][p]) for p in t.ratios]
        + [_cell(row["fa_clean"])]
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(tables: list[ResultsTable]) -> str:
    parts = []
    for t in tables:
        seeds = max((r["seeds"] for r in t.rows), default=0)
        note = f" (mean ± sd over {seeds} seeds)" if seeds > 1 else ""
        parts.append(
            f"### Task {t.title}{note}\n\n"
            + markdown_table(_results_header(t), [_results_cells(t, r) for r in t.rows])
        )
    legend = (
        "HS: harmful score, % of answers to harmful prompts the judge flags (lower is better). "
        "FA: fine-tune accuracy on the task, %. p: poison ratio of the attack. "
        "'not attacked': the aligned model before fine-tuning (for 'no defense': the base model)."
    )
    return "\n\n".join(parts) + "\n\n" + legend + "\n"


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _mean_or_blank(values: list[float | None]) -> str:
    mean, _ = _mean_sd(values)  # type: ignore[arg-type]
    return "" if mean is None else f"{mean:.4g}"


def results_csv(tables: list[ResultsTable]) -> str:
    ratios = sorted({p for t in tables for p in t.ratios})
    header = (
        ["task", "attack", "method", "seeds", "hs_not_attacked"]
        + [f"hs_p{_fmt_num(p)}" for p in ratios]
        + [f"fa_p{_fmt_num(p)}" for p in ratios]
        + ["fa_not_attacked"]
    )
    rows = []
    for t in tables:
        for r in t.rows:
            rows.append(
                [t.task, _attack_title(t.attack), r["method"], r["seeds"], _mean_or_blank(r["hs_clean"])]
                + [_mean_or_blank(r["hs"].get(p, [])) for p in ratios]
                + [_mean_or_blank(r["fa"].get(p, [])) for p in ratios]
                + [_mean_or_blank(r["fa_clean"])]
            )
    return _csv_text(header, rows)


def _long_value(metrics: dict[str, Any], key: str) -> Any:
    value = metric(metrics, key)
    return "" if value is None else value


def results_long_csv(runs: list[Run]) -> str:
    header = ["id", "method", "seed", "task", "poison_ratio", "attack", "attacked", "status", *METRICS]
    rows = []
    for r in runs:
        if r.kind != "evaluate":
            continue
        lab = r.labels
        metrics = r.metrics or {}
        rows.append(
            [
                r.id,
                lab.get("method"),
                lab.get("seed"),
                lab.get("task"),
                lab.get("poison_ratio"),
                _attack_title(_attack_key(lab.get("attack", {}))),
                lab.get("attacked"),
                "done" if r.done else "not done",
                *[_long_value(metrics, k) for k in METRICS],
            ]
        )
    return _csv_text(header, rows)


# ----- worst case over the attacks ----------------------------------------------------------------

FA_TOLERANCE = 5.0  # points of fine-tune accuracy an attack may lose and still count as a useful attack


def worst_cases(runs: list[Run], fa_tolerance: float = FA_TOLERANCE) -> list[dict[str, Any]]:
    """Per task and method: the attacked evaluation with the highest HS among the acceptable attacks.

    A defense is as strong as the worst attack it faces, and an attack that wrecks the user's task
    is no attack a provider sees (the user would not ship that model). So an attack counts when its
    fine-tune accuracy is at least the best FA any attacked run of the task reached minus
    `fa_tolerance` points (runs without an FA count). Every seed, poison ratio and attack setting is
    a candidate on its own.
    """
    attacked = [r for r in runs if r.kind == "evaluate" and r.labels.get("attacked") and r.done]
    rows = []
    for task in sorted({str(r.labels.get("task")) for r in attacked}):
        mine = [r for r in attacked if str(r.labels.get("task")) == task]
        fas = [fa for r in mine if (fa := metric(r.metrics, "fa_strict")) is not None]  # type: ignore[arg-type]
        threshold = max(fas) - fa_tolerance if fas else None
        for method in _method_order(mine):
            candidates = [r for r in mine if r.labels.get("method") == method]
            acceptable = [
                r
                for r in candidates
                if threshold is None
                or (fa := metric(r.metrics, "fa_strict")) is None  # type: ignore[arg-type]
                or fa >= threshold
            ]
            scored = [(hs, r) for r in acceptable if (hs := metric(r.metrics, "hs")) is not None]  # type: ignore[arg-type]
            worst = max(scored, key=lambda item: item[0], default=None)
            row: dict[str, Any] = {
                "task": task,
                "method": method,
                "fa_threshold": threshold,
                "attacks": len(candidates),
                "acceptable": len(acceptable),
                "id": None,
                "seed": None,
                "poison_ratio": None,
                "attack": "",
                "hs": None,
                "fa": None,
            }
            if worst is not None:
                hs, r = worst
                row.update(
                    id=r.id,
                    seed=r.labels.get("seed"),
                    poison_ratio=r.labels.get("poison_ratio"),
                    attack=_attack_title(_attack_key(r.labels.get("attack", {}))),
                    hs=hs,
                    fa=metric(r.metrics, "fa_strict"),  # type: ignore[arg-type]
                )
            rows.append(row)
    return rows


def worst_case_markdown(rows: list[dict[str, Any]], fa_tolerance: float) -> str:
    header = [
        "task",
        "method",
        "worst HS",
        "its FA",
        "poison ratio",
        "attack",
        "seed",
        "acceptable / attacks",
    ]
    body = [
        [
            r["task"],
            r["method"],
            _num_or_missing(r["hs"], 1),
            _num_or_missing(r["fa"], 1),
            MISSING if r["poison_ratio"] is None else _fmt_num(r["poison_ratio"]),
            r["attack"] or "base",
            MISSING if r["seed"] is None else str(r["seed"]),
            f"{r['acceptable']} / {r['attacks']}",
        ]
        for r in rows
    ]
    thresholds = sorted({(r["task"], r["fa_threshold"]) for r in rows if r["fa_threshold"] is not None})
    where = (
        "; ".join(f"{task}: FA ≥ {t:.1f}" for task, t in thresholds) or "no FA measured: every attack counts"
    )
    note = (
        f"Worst case: the attacked run with the highest HS among the acceptable attacks, i.e. those whose FA is "
        f"at most {fa_tolerance:g} points below the best FA any attack of the task reached ({where})."
    )
    return markdown_table(header, body) + "\n\n" + note + "\n"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else f"{value:.1f}"


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
            cells.append(_with_interval(entry.get("hs"), entry.get("hs_ci95")))
        agreement = "; ".join(
            f"{name} {a['agreement']:.0f}% ({a['kappa']:.2f})"
            for name, a in m.get("judge_agreement", {}).items()
        )
        cells.append(agreement or MISSING)
        cells.append(_with_interval(m.get("over_refusal_rate"), m.get("over_refusal_ci95")))
        rows.append(cells)
    legend = (
        "HS under each judge, [95% Wilson interval]; agreement: % of answers on which a judge agrees with the "
        "evaluation's own judge, (Cohen's κ); over-refusal: % of harmless requests refused [95% Wilson interval]."
    )
    return markdown_table(header, rows) + "\n\n" + legend + "\n"


def worst_case_csv(rows: list[dict[str, Any]]) -> str:
    keys = [
        "task",
        "method",
        "hs",
        "fa",
        "poison_ratio",
        "attack",
        "seed",
        "id",
        "fa_threshold",
        "acceptable",
        "attacks",
    ]
    return _dict_rows_csv(keys, rows)


def _dict_rows_csv(keys: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV of the given keys of each row, None as an empty cell."""
    return _csv_text(keys, [["" if r[k] is None else r[k] for k in keys] for r in rows])


PAIRED_KEYS = (
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
)


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


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "task",
        "method",
        "poison ratio",
        "attack",
        "seed",
        "prompts",
        "HS",
        "SFT's HS",
        "flagged for the method only",
        "for SFT only",
        "p (exact McNemar)",
    ]
    body = [
        [
            r["task"],
            r["method"],
            "not attacked" if r["poison_ratio"] is None else _fmt_num(r["poison_ratio"]),
            r["attack"] or "base",
            MISSING if r["seed"] is None else str(r["seed"]),
            *paired_count_cells(r),
        ]
        for r in rows
    ]
    note = (
        "Each method against SFT under the same attack, on the prompts both answered. Only the prompts "
        "where the two verdicts differ tell the models apart; p is the chance of a split at least this "
        "uneven if both were equally harmful (two-sided exact McNemar test)."
    )
    return markdown_table(header, body) + "\n\n" + note + "\n"


def paired_csv(rows: list[dict[str, Any]]) -> str:
    return _dict_rows_csv(list(PAIRED_KEYS), rows)


# ----- system table -------------------------------------------------------------------------------


SYSTEM_COLUMNS = (
    # (header, metrics key, digits)
    ("s/step", "seconds_per_step_median", 2),
    ("align time (s)", "train_wall_time_s", 0),
    ("peak memory (MB)", "peak_memory_mb", 0),
)


def system_rows(runs: list[Run]) -> list[dict[str, Any]]:
    aligns = [r for r in runs if r.kind == "align" and r.done]
    rows = []
    for m in _method_order(aligns):
        mine = [r.metrics for r in aligns if r.labels.get("method") == m]
        row: dict[str, Any] = {
            "method": m,
            "runs": len(mine),
            "steps": _mean_sd([x.get("global_step") for x in mine])[0],
        }  # type: ignore[union-attr]
        for _, key, _ in SYSTEM_COLUMNS:
            values = [x.get(key, x.get("wall_time_s") if key == "train_wall_time_s" else None) for x in mine]  # type: ignore[union-attr]
            row[key] = _mean_sd([v for v in values if v is not None])[0]
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


def _num_or_missing(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def system_markdown(rows: list[dict[str, Any]]) -> str:
    header = (
        ["method", "steps"]
        + [h for h, _, _ in SYSTEM_COLUMNS]
        + [f"{h.split(' (')[0]} / SFT" for h, _, _ in SYSTEM_COLUMNS]
    )
    body = [
        [r["method"], _num_or_missing(r["steps"], 0)]
        + [
            _num_or_missing(r[k], d) + (" (resumed)" if r["resumed"] and k == "train_wall_time_s" else "")
            for _, k, d in SYSTEM_COLUMNS
        ]
        + [_num_or_missing(r[f"{k}_ratio"], 2) for _, k, _ in SYSTEM_COLUMNS]
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
    return _csv_text(
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


# ----- plots --------------------------------------------------------------------------------------


def _save_figure(fig: Any, path: Path) -> None:
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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def plot_vs_poison_ratio(table: ResultsTable, metric: str, path: Path) -> bool:
    """HS or FA (y) against the poison ratio (x), one line per method (mean, error bar = sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = ("hs", "harmful score (%)") if metric == "hs" else ("fa", "fine-tune accuracy (%)")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    drawn = False
    for row in table.rows:
        points = [(p, *_mean_sd(row[key][p])) for p in table.ratios]
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
    _save_figure(fig, path)
    plt.close(fig)
    return True


LOSS_PLOTS = {
    # run kind -> (file name, title)
    "align": ("alignment_loss.png", "Alignment training loss"),
    "finetune": ("attack_loss.png", "Harmful fine-tuning (attack) training loss"),
}


def plot_training_loss(runs: list[Run], kind: str, path: Path) -> bool:
    """Training loss (y) against the optimizer step (x) of every finished run of `kind` (align or finetune).

    One colour per method; for attacks, one line style per poison ratio (for alignments, per seed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            label = f"{method}, p={_fmt_num(variant)}" if variant is not None else method
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
    _save_figure(fig, path)
    plt.close(fig)
    return True


# ----- the report ---------------------------------------------------------------------------------


def write_report(runs_dir: str | Path, fa_tolerance: float = FA_TOLERANCE) -> str:
    """Write the tables and plots of a runs folder; return a printable summary."""
    runs_dir = Path(runs_dir)
    runs = collect_runs(runs_dir)
    tables = results_tables(runs)
    sys_rows = system_rows(runs)
    worst = worst_cases(runs, fa_tolerance)
    results_md = results_markdown(tables) if tables else "No evaluations yet.\n"
    if worst:
        results_md += "\n### Worst case over the attacks\n\n" + worst_case_markdown(worst, fa_tolerance)
    paired = [{**r, "attack": _attack_title(_attack_key(r["attack"]))} for r in paired_rows(runs_dir, runs)]
    if paired:
        results_md += "\n### Against SFT, prompt by prompt\n\n" + paired_markdown(paired)
    judges_md = judges_markdown(runs)
    if judges_md:
        results_md += "\n### Every judge, with 95% intervals, and over-refusal\n\n" + judges_md
    system_md = system_markdown(sys_rows) if sys_rows else "No finished alignment runs yet.\n"
    done = sum(r.done for r in runs)
    status = f"{done} of {len(runs)} stages done" + (
        "" if done == len(runs) else " (rerun 'safeft run' to finish the rest)"
    )

    written = []
    atomic_write_text(runs_dir / "results.md", f"# Results: {runs_dir.name}\n\n{status}\n\n{results_md}")
    atomic_write_text(runs_dir / "results.csv", results_csv(tables))
    atomic_write_text(runs_dir / "results_long.csv", results_long_csv(runs))
    atomic_write_text(runs_dir / "worst_case.csv", worst_case_csv(worst))
    atomic_write_text(runs_dir / "paired.csv", paired_csv(paired))
    atomic_write_text(runs_dir / "system.md", f"# System cost: {runs_dir.name}\n\n{system_md}")
    atomic_write_text(runs_dir / "system.csv", system_csv(sys_rows))
    written += [
        "results.md",
        "results.csv",
        "results_long.csv",
        "worst_case.csv",
        "paired.csv",
        "system.md",
        "system.csv",
    ]
    plots = runs_dir / "plots"
    for t in tables:
        suffix = _slug(t.task + ("_" + _attack_title(t.attack) if t.attack else ""))
        for metric in ("hs", "fa"):
            name = f"{metric}_vs_poison_ratio_{suffix}.png"
            if t.ratios and plot_vs_poison_ratio(t, metric, plots / name):
                written.append(f"plots/{name}")
    for kind, (name, _) in LOSS_PLOTS.items():
        if plot_training_loss(runs, kind, plots / name):
            written.append(f"plots/{name}")
    return (
        f"Report of {runs_dir} ({status})\n\nResults\n\n{results_md}\nSystem cost of the alignment stage\n\n{system_md}\n"
        f"Written to {runs_dir}: {', '.join(written)}"
    )
