"""`safeft evaluate --rejudge EVAL_DIR --judge NAME`: saved answers scored again, nothing generated."""

from __future__ import annotations

import json

import pytest

from safeft.cli import main
from safeft.io import read_json, read_jsonl, write_json, write_jsonl
from safeft.stages.evaluate import rejudge

ANSWERS = ["Sure, here is how to do it.", "I'm sorry, I can't help with that.", "", "Step 1: buy a crowbar."]


def _saved_evaluation(path, judge="cpu", flagged=(True, True, False, False)):
    """An evaluation folder as an older safeft wrote it: only its own judge's verdicts per row."""
    write_json(path / "manifest.json", {"stage": "evaluate", "status": "done"})
    write_json(
        path / "metrics.json",
        {"hs": 50.0, "hs_plus": 50.0, "judge": judge, "judge_version": "old", "n_harmful": 4},
    )
    write_jsonl(
        path / "harmful_samples.jsonl",
        [{"id": i, "prompt": f"q{i}", "answer": a, "flagged": f, "score": float(f)} for i, (a, f) in enumerate(zip(ANSWERS, flagged, strict=True))],
    )  # fmt: skip
    return path


def test_rejudge_adds_a_judge_and_keeps_the_primary_hs(tmp_path):
    run = _saved_evaluation(tmp_path)
    metrics = rejudge(run, "keyword")
    # keyword: harmful = a non-empty answer without a refusal phrase -> answers 0 and 3
    assert metrics["judges"]["keyword"]["hs"] == 50.0
    assert metrics["hs"] == 50.0 and metrics["judges"]["cpu"]["hs"] == 50.0  # the saved primary verdicts
    assert metrics["judges"]["cpu"]["version"] == "old"
    # cpu flagged answers 0 and 1, keyword 0 and 3: they agree on 2 of 4
    assert metrics["judge_agreement"]["keyword"]["agreement"] == 50.0
    rows = read_jsonl(run / "harmful_samples.jsonl")
    assert [r["judges"]["keyword"]["flagged"] for r in rows] == [True, False, False, True]
    assert [r["flagged"] for r in rows] == [True, True, False, False]  # primary unchanged
    assert read_json(run / "metrics.json") == json.loads(json.dumps(metrics))


def test_rejudging_with_the_primary_name_replaces_its_verdicts(tmp_path):
    run = _saved_evaluation(tmp_path, judge="keyword", flagged=(True, True, True, True))  # stale verdicts
    metrics = rejudge(run, "keyword")
    assert metrics["hs"] == 50.0 and metrics["hs_ci95"][0] < 50.0 < metrics["hs_ci95"][1]
    assert metrics["rejudged"][0]["replaced_version"] == "old"
    assert [r["flagged"] for r in read_jsonl(run / "harmful_samples.jsonl")] == [True, False, False, True]


def test_rejudge_cli_round_trip_and_errors(tmp_path, capsys):
    run = _saved_evaluation(tmp_path / "eval")
    assert main(["evaluate", "--rejudge", str(run), "--judge", "keyword"]) == 0
    assert "keyword" in capsys.readouterr().out
    assert main(["evaluate", "--rejudge", str(run)]) == 2
    assert "needs --judge NAME" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--rejudge", str(tmp_path / "empty"), "--judge", "keyword"]) == 2
    assert "not a safeft run directory" in capsys.readouterr().err


def test_rejudge_refuses_an_unfinished_evaluation(tmp_path):
    run = _saved_evaluation(tmp_path)
    write_json(run / "manifest.json", {"stage": "evaluate", "status": "running"})
    with pytest.raises(Exception, match="not finished"):
        rejudge(run, "keyword")
