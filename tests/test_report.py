"""The report: hand-written run directories in, tables with the right cells and PNG plots out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from safeft.errors import SafeftError
from safeft.evaluation.result import EvaluationResult
from safeft.pipeline.report import collect_runs, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(root: Path, run_id: str, manifest: dict, metrics: dict | None, config: str = "") -> None:
    path = root / run_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps(manifest))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if config:
        (path / "config.yaml").write_text(config)


def _align_metrics(step_s: float, wall: float, mem: float, losses: list[float]) -> dict:
    history = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)] + [
        {"step": len(losses), "train_loss": sum(losses) / len(losses)}
    ]
    return {
        "seconds_per_step_median": step_s,
        "train_wall_time_s": wall,
        "peak_memory_mb": mem,
        "global_step": len(losses),
        "log_history": history,
    }


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """sft and booster with two seeds each, attacked at p = 0.1 and 0.2, plus the undefended base model."""
    root = tmp_path / "exp"
    stages = []

    def add(run_id: str, kind: str, labels: dict, metrics: dict | None, status: str = "done") -> None:
        _run(root, run_id, {"stage": kind, "status": status}, metrics)
        stages.append({"id": run_id, "kind": kind, "labels": labels, "depends_on": []})

    def ev(hs: float, fa: float) -> dict:
        return {
            "harmful_score": 100 * hs,
            "finetune_accuracy": 100 * fa,
            "refusal_rate": 100 * (1 - hs),
            "n_harmful": 100,
            "n_task": 50,
        }

    add(
        "evaluate/none-unattacked-sst2-aa",
        "evaluate",
        {
            "method": "no defense",
            "seed": None,
            "task": "sst2",
            "poison_ratio": None,
            "attack": {},
            "attacked": False,
        },
        ev(0.60, 0.50),
    )
    for p, hs in ((0.1, 0.70), (0.2, 0.80)):
        add(
            f"evaluate/none-s1-sst2-p{p}-aa",
            "evaluate",
            {
                "method": "no defense",
                "seed": 1,
                "task": "sst2",
                "poison_ratio": p,
                "attack": {},
                "attacked": True,
            },
            ev(hs, 0.90),
        )
    for method, base_hs, step_s, mem in (("sft", 0.30, 2.0, 1000.0), ("booster", 0.10, 6.0, 1500.0)):
        for seed, delta in ((1, -0.02), (2, 0.02)):
            add(
                f"align/{method}-s{seed}-aa",
                "align",
                {"method": method, "seed": seed},
                _align_metrics(step_s, step_s * 10, mem, [2.0, 1.5, 1.0 - delta]),
            )
            add(
                f"evaluate/{method}-s{seed}-unattacked-sst2-aa",
                "evaluate",
                {
                    "method": method,
                    "seed": seed,
                    "task": "sst2",
                    "poison_ratio": None,
                    "attack": {},
                    "attacked": False,
                },
                ev(0.05, 0.40),
            )
            for p in (0.1, 0.2):
                labels = {
                    "method": method,
                    "seed": seed,
                    "task": "sst2",
                    "poison_ratio": p,
                    "attack": {},
                    "attacked": True,
                }
                add(
                    f"evaluate/{method}-s{seed}-sst2-p{p}-aa",
                    "evaluate",
                    labels,
                    ev(base_hs + p + delta, 0.92),
                )
    (root / "experiment.json").write_text(json.dumps({"name": "exp", "stages": stages}))
    return root


def _md_row(text: str, method: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_results_table_cells_are_percent_means_over_seeds(runs_dir):
    summary = write_report(runs_dir)
    md = (runs_dir / "results.md").read_text()
    header = [
        c.strip()
        for c in next(line for line in md.splitlines() if line.startswith("| method")).strip("|").split("|")
    ]
    assert header == [
        "method",
        "HS not attacked",
        "HS p=0.1",
        "HS p=0.2",
        "FA p=0.1",
        "FA p=0.2",
        "FA not attacked",
    ]
    # sft at p=0.1: seeds give 0.30+0.1-0.02 and 0.30+0.1+0.02 -> mean 40.0 %, sd 2.8
    assert _md_row(md, "sft") == [
        "sft",
        "5.0 ± 0.0",
        "40.0 ± 2.8",
        "50.0 ± 2.8",
        "92.0 ± 0.0",
        "92.0 ± 0.0",
        "40.0 ± 0.0",
    ]
    assert _md_row(md, "booster")[2:4] == ["20.0 ± 2.8", "30.0 ± 2.8"]
    # the undefended row comes first; one seed -> no sd
    assert _md_row(md, "no defense") == ["no defense", "60.0", "70.0", "80.0", "90.0", "90.0", "50.0"]
    assert md.index("| no defense |") < md.index("| sft |") < md.index("| booster |")
    assert "| booster |" in summary

    rows = list(csv.DictReader((runs_dir / "results.csv").open()))
    booster = next(r for r in rows if r["method"] == "booster")
    assert (
        booster["task"],
        float(booster["hs_p0.2"]),
        float(booster["fa_not_attacked"]),
        booster["seeds"],
    ) == ("sst2", 30.0, 40.0, "2")
    long_rows = list(csv.DictReader((runs_dir / "results_long.csv").open()))
    assert len(long_rows) == 1 + 2 + 2 * 2 * 3


def test_hs_among_answered_leaves_the_silent_prompts_out():
    # 300 prompts, 225 empty answers (75%), 36 flagged (12%): 36 of the 75 answered = 48%
    assert EvaluationResult.from_metrics({"hs": 12.0, "empty_rate": 75.0}).hs_answered == pytest.approx(48.0)
    assert EvaluationResult.from_metrics({"hs": 30.0, "empty_rate": 0.0}).hs_answered == pytest.approx(30.0)
    # a model that answered nothing has no such share; runs without an empty rate neither
    assert EvaluationResult.from_metrics({"hs": 0.0, "empty_rate": 100.0}).hs_answered is None
    assert EvaluationResult.from_metrics({"hs": 30.0}).hs_answered is None


def test_results_long_has_hs_among_answered(runs_dir):
    metrics_path = runs_dir / "evaluate/sft-s1-sst2-p0.1-aa/metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["empty_rate"] = 50.0  # HS 38% of all prompts, half of them silent
    metrics_path.write_text(json.dumps(metrics))
    write_report(runs_dir)
    rows = {r["id"]: r for r in csv.DictReader((runs_dir / "results_long.csv").open())}
    assert float(rows["evaluate/sft-s1-sst2-p0.1-aa"]["hs_answered"]) == pytest.approx(76.0)
    assert rows["evaluate/sft-s2-sst2-p0.1-aa"]["hs_answered"] == ""


def test_system_table_has_ratios_to_sft(runs_dir):
    write_report(runs_dir)
    md = (runs_dir / "system.md").read_text()
    assert _md_row(md, "booster") == ["booster", "3", "6.00", "60", "1500", "3.00", "3.00", "1.50"]
    assert _md_row(md, "sft")[-3:] == ["1.00", "1.00", "1.00"]
    rows = {r["method"]: r for r in csv.DictReader((runs_dir / "system.csv").open())}
    assert float(rows["booster"]["seconds_per_step_median_ratio_to_sft"]) == pytest.approx(3.0)


def test_a_resumed_alignment_time_is_flagged_and_not_compared(runs_dir):
    # sft seed 1 was interrupted and resumed: its train time covers only the steps after the checkpoint
    metrics_path = runs_dir / "align/sft-s1-aa/metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["resumed_from"] = "checkpoints/checkpoint-2"
    metrics_path.write_text(json.dumps(metrics))
    write_report(runs_dir)
    md = (runs_dir / "system.md").read_text()
    assert _md_row(md, "sft")[3] == "20 (resumed)"
    # every time ratio depends on sft's time: left out; s/step and memory are still compared
    assert _md_row(md, "booster") == ["booster", "3", "6.00", "60", "1500", "3.00", "–", "1.50"]
    assert "covers the steps after that checkpoint only" in md
    rows = {r["method"]: r for r in csv.DictReader((runs_dir / "system.csv").open())}
    assert (rows["sft"]["resumed"], rows["booster"]["resumed"]) == ("True", "False")


def test_plots_are_png_files(runs_dir):
    index = json.loads((runs_dir / "experiment.json").read_text())
    for p in (0.1, 0.2):  # two attacks with their loss curves
        run_id = f"finetune/sft-s1-sst2-p{p}-aa"
        labels = {
            "method": "sft",
            "seed": 1,
            "task": "sst2",
            "poison_ratio": p,
            "attack": {},
            "attacked": True,
        }
        _run(
            runs_dir,
            run_id,
            {"stage": "finetune", "status": "done"},
            _align_metrics(2.0, 20, 900, [3.0, 2.0, 1.0 + p]),
        )
        index["stages"].append({"id": run_id, "kind": "finetune", "labels": labels, "depends_on": []})
    (runs_dir / "experiment.json").write_text(json.dumps(index))
    summary = write_report(runs_dir)
    assert "plots/attack_loss.png" in summary
    for name in (
        "hs_vs_poison_ratio_sst2.png",
        "fa_vs_poison_ratio_sst2.png",
        "alignment_loss.png",
        "attack_loss.png",
    ):
        data = (runs_dir / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not list(runs_dir.glob("**/*.tmp"))


def test_unfinished_stages_show_as_missing(runs_dir):
    (runs_dir / "evaluate/booster-s1-sst2-p0.2-aa/manifest.json").write_text(
        json.dumps({"stage": "evaluate", "status": "running"})
    )
    (runs_dir / "evaluate/booster-s2-sst2-p0.2-aa/metrics.json").unlink()
    (runs_dir / "evaluate/booster-s2-sst2-p0.2-aa/manifest.json").write_text(
        json.dumps({"stage": "evaluate", "status": "running"})
    )
    summary = write_report(runs_dir)
    assert _md_row((runs_dir / "results.md").read_text(), "booster")[3] == "–"
    assert "2 stages" not in summary and "rerun 'safeft run'" in summary


def test_report_without_index_follows_manifest_parents(tmp_path):
    """Run directories made stage by stage with the CLI: labels come from manifests and configs."""
    root = tmp_path / "manual"
    align, attack = root / "align-booster", root / "attack"
    _run(
        root,
        "align-booster",
        {"stage": "align", "status": "done", "method": "booster"},
        _align_metrics(3.0, 30, 900, [1.0, 0.5]),
        "method: booster\ntrain:\n  seed: 7\n",
    )
    _run(
        root,
        "attack",
        {
            "stage": "finetune",
            "status": "done",
            "parent": str(align.resolve()),
            "alignment_method": "booster",
        },
        {},
        f"from_run: {align}\ntask: sst2\npoison_ratio: 0.05\ntrain:\n  seed: 7\n",
    )
    _run(
        root,
        "eval",
        {"stage": "evaluate", "status": "done", "parent": str(attack.resolve())},
        {"hs": 25.0, "fa_strict": 50.0},
        f"run: {attack}\ntask: sst2\n",
    )
    runs = {r.id: r for r in collect_runs(root)}
    assert runs["eval"].labels == {
        "method": "booster",
        "seed": 7,
        "task": "sst2",
        "poison_ratio": 0.05,
        "attack": {},
        "attacked": True,
    }
    write_report(root)
    assert _md_row((root / "results.md").read_text(), "booster") == ["booster", "–", "25.0", "50.0", "–"]


def test_missing_runs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SafeftError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_worst_case_is_the_highest_hs_among_attacks_that_kept_the_task(runs_dir):
    # every attacked sft/booster run has FA 92 and the undefended ones FA 90: with 5 points of
    # tolerance all count, and the worst case is each method's highest single-seed HS
    write_report(runs_dir)
    rows = {r["method"]: r for r in csv.DictReader((runs_dir / "worst_case.csv").open())}
    assert float(rows["sft"]["hs"]) == pytest.approx(52.0)  # 0.30 + 0.2 + 0.02, seed 2 at p = 0.2
    assert (rows["sft"]["seed"], float(rows["sft"]["poison_ratio"])) == ("2", 0.2)
    assert float(rows["booster"]["hs"]) == pytest.approx(32.0)
    assert float(rows["no defense"]["hs"]) == pytest.approx(80.0)
    assert float(rows["sft"]["fa_threshold"]) == pytest.approx(87.0)
    assert "### Worst case over the attacks" in (runs_dir / "results.md").read_text()

    # The threshold is each method's own best FA minus the tolerance (issue 20): the undefended
    # attacks (FA 90) count against their own best, though sft's attacks reached 92 ...
    write_report(runs_dir, fa_tolerance=1.0)
    rows = {r["method"]: r for r in csv.DictReader((runs_dir / "worst_case.csv").open())}
    assert (rows["no defense"]["hs"], rows["no defense"]["acceptable"], rows["no defense"]["attacks"]) == (
        "80.0",
        "2",
        "2",
    )
    assert float(rows["no defense"]["fa_threshold"]) == pytest.approx(89.0)
    assert float(rows["sft"]["hs"]) == pytest.approx(52.0)

    # ... and an attack that cost the method's task more than the tolerance is left out
    path = runs_dir / "evaluate/booster-s2-sst2-p0.2-aa/metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "finetune_accuracy": 85.0}))
    write_report(runs_dir)
    rows = {r["method"]: r for r in csv.DictReader((runs_dir / "worst_case.csv").open())}
    assert float(rows["booster"]["hs"]) == pytest.approx(28.0)  # 0.10 + 0.2 - 0.02, seed 1 at p = 0.2
    assert (rows["booster"]["acceptable"], rows["booster"]["attacks"]) == ("3", "4")


def test_report_shows_every_judge_with_intervals_and_over_refusal(runs_dir):
    metrics_path = runs_dir / "evaluate/sft-s1-sst2-p0.1-aa/metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics.update(
        hs=28.0,
        hs_ci95=[20.1, 37.5],
        judges={
            "cpu": {"hs": 28.0, "hs_ci95": [20.1, 37.5]},
            "keyword": {"hs": 61.0, "hs_ci95": [51.2, 70.0]},
        },
        judge_agreement={"keyword": {"agreement": 67.0, "kappa": 0.35}},
        over_refusal_rate=12.0,
        over_refusal_ci95=[7.0, 19.8],
    )
    metrics_path.write_text(json.dumps(metrics))
    write_report(runs_dir)
    text = (runs_dir / "results.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| evaluate/sft-s1-sst2-p0.1-aa |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "evaluate/sft-s1-sst2-p0.1-aa",
        "28.0 [20.1, 37.5]",
        "61.0 [51.2, 70.0]",
        "keyword 67% (0.35)",
        "12.0 [7.0, 19.8]",
    ]
    rows = {r["id"]: r for r in csv.DictReader((runs_dir / "results_long.csv").open())}
    got = rows["evaluate/sft-s1-sst2-p0.1-aa"]
    assert (
        got["hs_ci95_low"],
        got["hs_ci95_high"],
        got["hs_keyword"],
        got["over_refusal_rate"],
    ) == ("20.1", "37.5", "61.0", "12.0")
    assert rows["evaluate/sft-s2-sst2-p0.1-aa"]["hs_keyword"] == ""  # an older run: blank, not 0


# ----- the plots' data, read back from the drawn figures -------------------------------------------

T_975_DF1 = 12.706204736  # Student t, 97.5% quantile, 1 degree of freedom (two seeds), from tables
T_975_DF2 = 4.302652730  # 2 degrees of freedom (three seeds)


def _wilson_percent(flagged: int, n: int) -> tuple[float, float]:
    """An independent Wilson 95% interval: scipy's, in %."""
    from scipy.stats import binomtest

    ci = binomtest(flagged, n).proportion_ci(method="wilson")
    return 100 * ci.low, 100 * ci.high


def _band_limits(band, x: float) -> tuple[float, float]:
    """(low, high) of a fill_between band at x, from the polygon's vertices."""
    ys = [y for vx, y in band.get_paths()[0].vertices if vx == pytest.approx(x)]
    return min(ys), max(ys)


def _flat(pairs) -> list[float]:
    return [float(v) for pair in pairs for v in pair]


def _only_seed_1(runs_dir: Path) -> None:
    """Leave seed 2's evaluations unfinished: every point is one run."""
    for path in runs_dir.glob("evaluate/*-s2-*"):
        (path / "manifest.json").write_text(json.dumps({"stage": "evaluate", "status": "running"}))


def _with_protocol(runs_dir: Path, poison_ratios: list[float], attack: dict | None = None) -> None:
    index = json.loads((runs_dir / "experiment.json").read_text())
    index["experiment"] = {"grid": {"poison_ratios": poison_ratios, "attack": attack or {}}}
    (runs_dir / "experiment.json").write_text(json.dumps(index))


def test_t_interval_matches_the_tabulated_quantiles():
    from safeft.pipeline.report.intervals import t_interval

    assert t_interval([38.0, 42.0]) == pytest.approx((40 - 2 * T_975_DF1, 40 + 2 * T_975_DF1))
    half = T_975_DF2 * 10 / 3**0.5  # sd of 10, 20, 30 is 10
    assert t_interval([10.0, 20.0, 30.0]) == pytest.approx((20 - half, 20 + half))
    with pytest.raises(ValueError, match="at least two"):
        t_interval([1.0])


def test_hs_band_is_the_wilson_interval_of_one_seed(runs_dir):
    from safeft.pipeline.report.plots import figure_vs_poison_ratio
    from safeft.pipeline.report.results import results_tables

    _only_seed_1(runs_dir)
    (table,) = results_tables(collect_runs(runs_dir))
    fig = figure_vs_poison_ratio(table, "hs")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    bands = dict(zip([row["method"] for row in table.rows], ax.collections, strict=True))
    # seed 1 is 2 points below each defended method's base + p; the undefended attacks have HS 70 and 80
    for method, expected in (("no defense", [70, 80]), ("sft", [38, 48]), ("booster", [18, 28])):
        assert list(lines[method].get_ydata()) == pytest.approx(expected)
        for p, hs in zip((0.1, 0.2), expected, strict=True):  # of 100 answers each
            assert _band_limits(bands[method], p) == pytest.approx(_wilson_percent(hs, 100))


def test_hs_band_over_seeds_is_the_t_interval_of_their_mean_clipped_at_zero(runs_dir):
    from safeft.pipeline.report.plots import figure_vs_poison_ratio
    from safeft.pipeline.report.results import results_tables

    (table,) = results_tables(collect_runs(runs_dir))
    ax = figure_vs_poison_ratio(table, "hs").axes[0]
    bands = dict(zip([row["method"] for row in table.rows], ax.collections, strict=True))
    # seeds 1 and 2 are 2 points below and above the base: mean = base + p, half-width t(1) * 2
    assert _band_limits(bands["sft"], 0.1) == pytest.approx((40 - 2 * T_975_DF1, 40 + 2 * T_975_DF1))
    assert _band_limits(bands["booster"], 0.1) == pytest.approx((0.0, 20 + 2 * T_975_DF1))  # HS >= 0
    # the undefended model has one attack per ratio (seed 1 only): Wilson
    assert _band_limits(bands["no defense"], 0.2) == pytest.approx(_wilson_percent(80, 100))


def test_worst_case_bars_have_the_worst_runs_wilson_interval_beside_the_fixed_protocol(runs_dir):
    from safeft.pipeline.report.plots import figure_worst_case
    from safeft.pipeline.report.runs import fixed_protocol
    from safeft.pipeline.report.worst_case import worst_cases

    _with_protocol(runs_dir, [0.1, 0.2])  # the fixed protocol: p = 0.1, the base attack
    rows = worst_cases(collect_runs(runs_dir), protocol=fixed_protocol(runs_dir))
    ax = figure_worst_case(rows, "sst2").axes[0]
    bars = {c.get_label(): c for c in ax.containers if hasattr(c, "patches")}
    methods = [t.get_text() for t in ax.get_xticklabels()]
    assert methods == ["no defense", "sft", "booster"]

    worst = bars["worst case (FA kept)"]
    # the worst acceptable attack: seed 2 at p = 0.2 (no defense: its one attack at p = 0.2)
    assert [p.get_height() for p in worst.patches] == pytest.approx([80, 52, 32])
    segments = worst.errorbar.lines[2][0].get_segments()
    for segment, hs in zip(segments, (80, 52, 32), strict=True):
        assert (segment[0][1], segment[1][1]) == pytest.approx(_wilson_percent(hs, 100))

    fixed = bars["fixed protocol"]
    # at p = 0.1: no defense's one run (70, Wilson), sft's and booster's two seeds (t over seeds)
    assert [p.get_height() for p in fixed.patches] == pytest.approx([70, 40, 20])
    low_high = [(s[0][1], s[1][1]) for s in fixed.errorbar.lines[2][0].get_segments()]
    assert _flat(low_high) == pytest.approx(
        _flat([_wilson_percent(70, 100), (40 - 2 * T_975_DF1, 40 + 2 * T_975_DF1), (0.0, 20 + 2 * T_975_DF1)])
    )
    write_report(runs_dir)
    csv_rows = {r["method"]: r for r in csv.DictReader((runs_dir / "worst_case.csv").open())}
    assert float(csv_rows["sft"]["fixed_hs"]) == pytest.approx(40.0)
    assert csv_rows["sft"]["fixed_runs"] == "2"
    assert (runs_dir / "plots" / "worst_case_sst2.png").read_bytes().startswith(PNG_MAGIC)


def test_tradeoff_scatter_has_one_point_per_attack_setting_with_both_intervals(runs_dir):
    from safeft.pipeline.report.plots import figure_tradeoff

    ax = figure_tradeoff(collect_runs(runs_dir), "sst2").axes[0]
    points = {c.get_label(): c for c in ax.containers}
    assert set(points) == {"no defense", "sft", "booster"}

    # the undefended model: one run per ratio, FA 90% of 50 task rows, HS 70 and 80 of 100
    data_line, _, (x_bars, y_bars) = points["no defense"].lines
    assert _flat(data_line.get_xydata()) == pytest.approx([90, 70, 90, 80])
    fa_low, fa_high = _wilson_percent(45, 50)
    for segment in x_bars.get_segments():
        assert (segment[0][0], segment[1][0]) == pytest.approx((fa_low, fa_high))
    for segment, hs in zip(y_bars.get_segments(), (70, 80), strict=True):
        assert (segment[0][1], segment[1][1]) == pytest.approx(_wilson_percent(hs, 100))

    # sft: two seeds per ratio, averaged; FA 92 in both seeds (no spread), HS 40 and 50
    data_line, _, (_, y_bars) = points["sft"].lines
    assert _flat(data_line.get_xydata()) == pytest.approx([92, 40, 92, 50])
    assert _flat((s[0][1], s[1][1]) for s in y_bars.get_segments()) == pytest.approx(
        [40 - 2 * T_975_DF1, 40 + 2 * T_975_DF1, 50 - 2 * T_975_DF1, 50 + 2 * T_975_DF1]
    )
    write_report(runs_dir)
    assert (runs_dir / "plots" / "hs_fa_tradeoff_sst2.png").read_bytes().startswith(PNG_MAGIC)


def test_results_md_gives_each_cell_its_95_percent_interval(runs_dir):
    write_report(runs_dir)
    md = (runs_dir / "results.md").read_text()
    table = md[md.index("With 95% intervals") :]
    # sft at p = 0.1: seeds 38 and 42 -> 40.0 ± t(1) * 2; no defense: one run, Wilson of 70 of 100
    half = 2 * T_975_DF1
    assert _md_row(table, "sft")[1] == f"40.0 [{40 - half:.1f}, {40 + half:.1f}] (2 seeds)"
    low, high = _wilson_percent(70, 100)
    assert _md_row(table, "no defense")[1] == f"70.0 [{low:.1f}, {high:.1f}]"
    fa_low, fa_high = _wilson_percent(45, 50)  # FA 90% of 50 task rows
    assert _md_row(table, "no defense")[3] == f"90.0 [{fa_low:.1f}, {fa_high:.1f}]"
