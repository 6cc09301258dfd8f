"""`safeft judge eval`: any judge against human labels from any file, with bootstrap intervals."""

from __future__ import annotations

import csv

import pytest

from safeft.cli import main
from safeft.errors import DataError
from safeft.evaluation.judge_eval import judge_agreement, read_labelled_pairs
from safeft.evaluation.judges import KeywordJudge
from safeft.io import write_jsonl

REFUSAL = "I'm sorry, but I can't help with that."
COMPLIANT = "Sure. Step 1: get the tools. Step 2: do it at night."


def test_labels_are_read_from_harmful_or_is_safe_fields_and_words(tmp_path):
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"prompt": "q1", "response": "r1", "is_safe": True},
            {"prompt": "q2", "response": "r2", "is_safe": False},
        ],
    )
    assert read_labelled_pairs(tmp_path / "a.jsonl").harmful == [False, True]
    write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"q": "x", "a": "y", "verdict": v}
            for v in ("harmful", "unharmful", "unsafe", "safe", 1, 0, "yes", "no")
        ],
    )
    pairs = read_labelled_pairs(
        tmp_path / "b.jsonl", prompt_field="q", response_field="a", label_field="verdict"
    )
    assert pairs.harmful == [True, False, True, False, True, False, True, False]
    # a field that means "safe": booleans and numbers flip, words keep their meaning
    flipped = read_labelled_pairs(
        tmp_path / "b.jsonl",
        prompt_field="q",
        response_field="a",
        label_field="verdict",
        label_means_safe=True,
    )
    assert flipped.harmful == [True, False, True, False, False, True, False, True]


def test_csv_files_work(tmp_path):
    with open(tmp_path / "h.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "response", "harmful"])
        w.writerow(["q", COMPLIANT, "1"])
        w.writerow(["q", REFUSAL, "0"])
    assert read_labelled_pairs(tmp_path / "h.csv").harmful == [True, False]


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "q", "harmful": True}, "response", "expected text, got missing"),
        ({"prompt": 3, "response": "r", "harmful": True}, "prompt", "expected text, got a int"),
        ({"prompt": "q", "response": "r", "harmful": "maybe"}, "harmful", "not a yes/no value"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row, field, message):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"prompt": "ok", "response": "ok", "harmful": False}, row])
    with pytest.raises(DataError, match=message) as e:
        read_labelled_pairs(path)
    assert (e.value.path, e.value.row, e.value.field) == (str(path), 2, field)


def test_a_file_without_a_label_field_says_how_to_name_it(tmp_path):
    write_jsonl(tmp_path / "n.jsonl", [{"prompt": "q", "response": "r"}])
    with pytest.raises(DataError, match="--label-field"):
        read_labelled_pairs(tmp_path / "n.jsonl")


def test_keyword_judge_agreement_against_hand_counts(tmp_path):
    # 3 harmful compliant, 1 harmless compliant (a false positive), 2 refusals labelled harmless
    rows = [{"prompt": "q", "response": COMPLIANT, "harmful": True}] * 3
    rows += [{"prompt": "q", "response": "Paris.", "harmful": False}]
    rows += [{"prompt": "q", "response": REFUSAL, "harmful": False}] * 2
    write_jsonl(tmp_path / "l.jsonl", rows)
    result = judge_agreement(KeywordJudge(), read_labelled_pairs(tmp_path / "l.jsonl"), resamples=200)
    assert result["accuracy"]["value"] == pytest.approx(5 / 6, abs=1e-4)
    assert result["precision"]["value"] == 0.75 and result["recall"]["value"] == 1.0
    # κ: p_o = 5/6, p_e = (4*3 + 2*3) / 36 = 0.5 -> (5/6 - 1/2) / (1/2) = 2/3
    assert result["kappa"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    low, high = result["accuracy"]["ci95"]
    assert low <= 5 / 6 <= high
    assert (result["n"], result["harmful"], result["flagged"]) == (6, 3, 4)


def test_judge_eval_cli_prints_the_table(tmp_path, capsys):
    write_jsonl(
        tmp_path / "l.jsonl",
        [
            {"prompt": "q", "response": COMPLIANT, "harmful": True},
            {"prompt": "q", "response": REFUSAL, "harmful": False},
        ],
    )
    out = tmp_path / "r.json"
    code = main(
        [
            "judge",
            "eval",
            "--data",
            str(tmp_path / "l.jsonl"),
            "--judge",
            "keyword",
            "--resamples",
            "50",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| l.jsonl | keyword | 2 (1) | 1.000 [1.000, 1.000]" in printed
    assert out.is_file()


def test_judge_eval_cli_bad_file_is_a_clean_error(tmp_path, capsys):
    write_jsonl(tmp_path / "l.jsonl", [{"prompt": "q", "answer": "x", "harmful": True}])
    assert main(["judge", "eval", "--data", str(tmp_path / "l.jsonl"), "--judge", "keyword"]) == 2
    assert "row 1, field 'response'" in capsys.readouterr().err


def test_heldout_sets_are_rebuilt_from_the_data_folder(shared_data):
    from safeft.evaluation.cpu_judge import judge_splits
    from safeft.evaluation.judge_eval import heldout_set

    splits = judge_splits(shared_data)
    heldout = heldout_set("heldout", shared_data)
    assert len(heldout.prompts) == len(splits["heldout"]) > 500
    prompts = {k: {" ".join(r.instruction.lower().split()) for r in rows} for k, rows in splits.items()}
    assert not prompts["train"] & prompts["heldout"] and not prompts["train"] & prompts["validation"]
    assert not prompts["eval_prompts"] & (prompts["train"] | prompts["validation"] | prompts["heldout"])
    assert len(splits["eval_prompts"]) == 1336  # the labelled pairs of the 1,000 evaluation prompts
