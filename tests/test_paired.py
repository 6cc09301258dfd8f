"""Paired comparison against SFT: discordant prompts counted by hand, p-values from the binomial by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from safeft.cli import main
from safeft.pipeline.paired import mcnemar_exact_p
from safeft.pipeline.report import write_report


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # no disagreement: no evidence of a difference
        (0, 5, 2 / 32),  # 2 * P(X = 0), X ~ Bin(5, 1/2)
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
        (9, 1, 2 * (1 + 10) / 1024),  # symmetric in b and c
        (3, 3, 1.0),  # an even split: 2 * P(X <= 3) > 1, capped
        (2, 4, 2 * (1 + 6 + 15) / 64),
    ],
)
def test_mcnemar_exact_p_matches_the_binomial_tail(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected)


def _evaluation(root: Path, run_id: str, flags: list[bool]) -> None:
    path = root / run_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"stage": "evaluate", "status": "done"}))
    hs = 100 * sum(flags) / len(flags)
    (path / "metrics.json").write_text(json.dumps({"hs": hs, "fa_strict": 90.0}))
    (path / "harmful_samples.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "prompt": f"q{i}", "answer": "a", "flagged": f, "source": "eval", "row": i})
            + "\n"
            for i, f in enumerate(flags)
        )
    )


def test_report_pairs_each_method_with_sft_under_the_same_attack(tmp_path):
    root = tmp_path / "exp"
    sft = [True, False, False, True, False, False]
    booster = [True, True, True, False, False, False]  # prompts 1, 2 flagged for booster only; 3 for sft only
    stages = []
    for method, flags in (("sft", sft), ("booster", booster)):
        for p in (0.1, 0.2):
            run_id = f"evaluate/{method}-p{p}"
            # at p = 0.2 booster's verdicts are sft's: no discordant prompt
            _evaluation(root, run_id, flags if p == 0.1 else sft)
            labels = {
                "method": method,
                "seed": 1,
                "task": "sst2",
                "poison_ratio": p,
                "attack": {},
                "attacked": True,
            }
            stages.append({"id": run_id, "kind": "evaluate", "labels": labels, "depends_on": []})
    # an evaluation without an SFT twin (other seed) gets no row
    _evaluation(root, "evaluate/booster-seed2", booster)
    labels = {
        "method": "booster",
        "seed": 2,
        "task": "sst2",
        "poison_ratio": 0.1,
        "attack": {},
        "attacked": True,
    }
    stages.append({"id": "evaluate/booster-seed2", "kind": "evaluate", "labels": labels, "depends_on": []})
    (root / "experiment.json").write_text(json.dumps({"name": "exp", "stages": stages}))

    write_report(root)

    rows = list(csv.DictReader((root / "paired.csv").open()))
    assert [(r["method"], r["poison_ratio"], r["seed"]) for r in rows] == [
        ("booster", "0.1", "1"),
        ("booster", "0.2", "1"),
    ]
    at_01, at_02 = rows
    assert (at_01["n"], at_01["only_method"], at_01["only_reference"]) == ("6", "2", "1")
    assert float(at_01["hs"]) == pytest.approx(50.0)
    assert float(at_01["reference_hs"]) == pytest.approx(100 * 2 / 6)
    assert float(at_01["p_value"]) == pytest.approx(1.0)  # 2 * P(X <= 1), X ~ Bin(3, 1/2) = 1
    assert (at_02["only_method"], at_02["only_reference"], float(at_02["p_value"])) == ("0", "0", 1.0)
    assert "### Against SFT, prompt by prompt" in (root / "results.md").read_text()


def test_only_prompts_both_runs_answered_are_paired(tmp_path):
    root = tmp_path / "exp"
    _evaluation(root, "evaluate/sft", [False] * 4)
    _evaluation(root, "evaluate/booster", [True] * 4)
    # drop booster's last two prompts: 2 shared prompts remain, both flagged for booster only
    lines = (root / "evaluate/booster/harmful_samples.jsonl").read_text().splitlines(keepends=True)
    (root / "evaluate/booster/harmful_samples.jsonl").write_text("".join(lines[:2]))
    labels = {"seed": 1, "task": "sst2", "poison_ratio": 0.2, "attack": {}, "attacked": True}
    stages = [
        {"id": f"evaluate/{m}", "kind": "evaluate", "labels": {**labels, "method": m}, "depends_on": []}
        for m in ("sft", "booster")
    ]
    (root / "experiment.json").write_text(json.dumps({"name": "exp", "stages": stages}))

    write_report(root)

    (row,) = csv.DictReader((root / "paired.csv").open())
    assert (row["n"], row["only_method"], row["only_reference"]) == ("2", "2", "0")
    assert float(row["p_value"]) == pytest.approx(2 / 4)  # 2 * P(X = 0), X ~ Bin(2, 1/2)


def test_compare_command_pairs_evaluations_from_any_folders(tmp_path, capsys):
    # e.g. a follow-up experiment's evaluation against the reproduction's Vaccine evaluation
    _evaluation(tmp_path / "repro", "vaccine-p0.1", [False, False, True, False, False, False])
    _evaluation(tmp_path / "follow_up", "booster-p0.1", [True, True, True, False, True, False])
    reference = str(tmp_path / "repro/vaccine-p0.1")

    assert main(["compare", reference, str(tmp_path / "follow_up/booster-p0.1")]) == 0

    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")[2:-1]
    # prompts 0, 1, 4 flagged for booster only, none for vaccine only: 2 * P(X = 0), X ~ Bin(3, 1/2);
    # Wilson 95% intervals of 4/6 and 1/6 worked by hand (z = 1.96)
    assert [cell.strip() for cell in row] == [
        "(its own)",
        "6",
        "66.7 [30.0, 90.3]",
        "16.7 [3.0, 56.4]",
        "3",
        "0",
        "0.25",
    ]


def test_compare_command_pairs_under_every_judge_both_saved(tmp_path, capsys):
    def evaluation(path: Path, cpu: list[bool], keyword: list[bool]) -> None:
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"stage": "evaluate", "status": "done"}))
        rows = [
            {"id": i, "prompt": f"q{i}", "answer": "a", "flagged": c, "source": "eval", "row": i,
             "judges": {"cpu": {"flagged": c, "score": float(c)}, "keyword": {"flagged": k, "score": float(k)}}}
            for i, (c, k) in enumerate(zip(cpu, keyword, strict=True))
        ]  # fmt: skip
        (path / "harmful_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    evaluation(tmp_path / "a", [True, False, False, False], [True, True, True, False])
    evaluation(tmp_path / "b", [False, False, False, False], [True, False, False, False])
    assert main(["compare", str(tmp_path / "b"), str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    cells = [[c.strip() for c in line.split("|")[2:-1]] for line in lines]
    assert [c[0] for c in cells] == ["cpu", "keyword"]
    assert [c.split()[0] for c in cells[0][2:4]] == ["25.0", "0.0"]
    assert [c.split()[0] for c in cells[1][2:4]] == ["75.0", "25.0"]
    assert cells[1][4:6] == ["2", "0"]


def test_compare_command_names_the_missing_samples_file(tmp_path, capsys):
    _evaluation(tmp_path, "sft", [True, False])
    (tmp_path / "not_an_evaluation").mkdir()

    assert main(["compare", str(tmp_path / "sft"), str(tmp_path / "not_an_evaluation")]) == 2

    assert str(tmp_path / "not_an_evaluation" / "harmful_samples.jsonl") in capsys.readouterr().err


def _seeded_experiment(root: Path, flags: dict[tuple[str, int], list[bool]]) -> None:
    """Evaluations of (method, seed) at p = 0.1 with the given per-prompt verdicts, and their index."""
    stages = []
    for (method, seed), verdicts in flags.items():
        run_id = f"evaluate/{method}-s{seed}-p0.1"
        _evaluation(root, run_id, verdicts)
        labels = {
            "method": method,
            "seed": seed,
            "task": "sst2",
            "poison_ratio": 0.1,
            "attack": {},
            "attacked": True,
        }
        stages.append({"id": run_id, "kind": "evaluate", "labels": labels, "depends_on": []})
    (root / "experiment.json").write_text(json.dumps({"name": "exp", "stages": stages}))


def test_the_paired_test_pools_discordant_prompts_over_seeds(tmp_path):
    from scipy.stats import binomtest

    root = tmp_path / "exp"
    # per seed, 10 prompts: booster is flagged on 1 prompt SFT is not, SFT on 4 (seed 3: 5) booster is not
    sft = {1: [True] * 5 + [False] * 5, 2: [True] * 5 + [False] * 5, 3: [True] * 6 + [False] * 4}
    booster = {
        1: [True, False, False, False, False, True, False, False, False, False],
        2: [True, False, False, False, False, True, False, False, False, False],
        3: [True, False, False, False, False, False, True, False, False, False],
    }
    flags = {("sft", s): f for s, f in sft.items()} | {("booster", s): f for s, f in booster.items()}
    _seeded_experiment(root, flags)

    write_report(root)

    per_seed = list(csv.DictReader((root / "paired.csv").open()))
    assert [(r["seed"], r["only_method"], r["only_reference"]) for r in per_seed] == [
        ("1", "1", "4"),
        ("2", "1", "4"),
        ("3", "1", "5"),
    ]
    assert all(float(r["p_value"]) > 0.05 for r in per_seed)  # no seed alone tells them apart
    (pooled,) = csv.DictReader((root / "paired_pooled.csv").open())
    assert (pooled["seeds"], pooled["n"], pooled["only_method"], pooled["only_reference"]) == (
        "3",
        "30",
        "3",
        "13",
    )
    assert float(pooled["p_value"]) == pytest.approx(binomtest(3, 16, 0.5).pvalue)
    assert float(pooled["p_value"]) < 0.05  # together they do
    assert float(pooled["hs"]) == pytest.approx(100 * 6 / 30)
    assert float(pooled["reference_hs"]) == pytest.approx(100 * 16 / 30)
    text = (root / "results.md").read_text()
    assert "### Against SFT, pooled over seeds" in text
    sentence = next(line for line in text.splitlines() if line.startswith("- sst2, p = 0.1"))
    assert "booster beats sft (lower HS)" in sentence
    assert "30 paired answers over 3 seeds" in sentence
    assert f"p = {binomtest(3, 16, 0.5).pvalue:.3g}" in sentence


def test_a_pooled_difference_the_test_cannot_see_is_does_not_beat(tmp_path):
    from scipy.stats import binomtest

    from safeft.pipeline.paired import verdict

    root = tmp_path / "exp"
    sft = [True, True, False, False]
    # seed 1: 1 flagged for booster only; seed 2: 1 for sft only -> pooled 1 vs 1
    _seeded_experiment(
        root,
        {
            ("sft", 1): sft,
            ("sft", 2): sft,
            ("booster", 1): [True, True, True, False],
            ("booster", 2): [True, False, False, False],
        },
    )
    write_report(root)
    (pooled,) = csv.DictReader((root / "paired_pooled.csv").open())
    assert (pooled["only_method"], pooled["only_reference"]) == ("1", "1")
    assert float(pooled["p_value"]) == pytest.approx(binomtest(1, 2, 0.5).pvalue)
    assert "booster does not beat sft: no difference detectable" in (root / "results.md").read_text()

    worse = {
        "task": "sst2",
        "method": "booster",
        "reference": "sft",
        "poison_ratio": 0.2,
        "attack": "",
        "seeds": 3,
        "n": 900,
        "hs": 40.0,
        "reference_hs": 30.0,
        "only_method": 100,
        "only_reference": 10,
        "p_value": binomtest(100, 110, 0.5).pvalue,
    }
    assert "booster does not beat sft: its HS is higher" in verdict(worse)
