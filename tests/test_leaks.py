"""Leak checks for every role: what an evaluation scores against everything its model trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _stage_support import align_argv, finetune_argv
from safeft.cli import main
from safeft.pipeline.demo_data import write_demo_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("leak-data")
    return write_demo_data(root, n_refusals=24, n_pool=8, n_attack=16, n_eval=8, n_task=40, n_task_eval=8)


def _evaluate(run: Path, out: Path, prompts: str, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--run",
        str(run),
        "--judge",
        "keyword",
        "--harmful-prompts",
        prompts,
        "--limit",
        "8",
        "--harmless-limit",
        "0",
        "--max-new-tokens",
        "2",
        "--task-max-new-tokens",
        "1",
        "--output",
        str(out),
        *extra,
    ]


def _leaks(out: Path) -> dict[tuple[str, str], int | None]:
    leaks = json.loads((out / "metrics.json").read_text())["leaks"]
    return {(leak["trained"].split(" of ")[0], leak["scored"]): leak["overlap"] for leak in leaks}


def test_alignment_rows_that_are_evaluation_prompts(data, tmp_path, capsys):
    align = tmp_path / "align"
    assert main(align_argv(data, align, "sft", "--train.max-steps", "1")) == 0
    # two evaluation prompts that are alignment rows (one with other case and spacing), six that are not
    refusals = [json.loads(line)["instruction"] for line in Path(data["refusals"]).read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in Path(data["eval_prompts"]).read_text().splitlines()]
    leaky = tmp_path / "prompts.jsonl"
    rows = [refusals[3], "  " + refusals[10].upper(), *prompts[:6]]
    leaky.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))

    clean = tmp_path / "clean"
    assert main(_evaluate(align, clean, data["eval_prompts"])) == 0
    assert _leaks(clean) == {("alignment rows", "harmful evaluation prompts"): 0}

    leaked = tmp_path / "leaked"
    assert main(_evaluate(align, leaked, str(leaky))) == 0
    assert _leaks(leaked) == {("alignment rows", "harmful evaluation prompts"): 2}

    capsys.readouterr()
    strict = tmp_path / "strict"
    assert main(_evaluate(align, strict, str(leaky), "--strict")) == 2
    err = capsys.readouterr().err
    assert "--strict" in err and "2 of 24 rows overlap" in err and "Traceback" not in err
    assert not strict.exists()


def test_a_task_evaluated_on_its_training_rows(data, tmp_path, capsys):
    attack = tmp_path / "attack"
    argv = finetune_argv(
        data,
        attack,
        *("--samples", "10", "--poison-ratio", "0.2", "--max-length", "32"),
        *("--train.max-steps", "1", "--train.batch-size", "4", "--train.progress", "false"),
    )
    assert main(argv) == 0
    task = ["--task", "sst2", "--task-limit", "40"]
    held_out = tmp_path / "held-out"
    assert (
        main(_evaluate(attack, held_out, data["eval_prompts"], *task, "--task-data", data["sst2_eval"])) == 0
    )
    assert _leaks(held_out) == {
        ("attack rows", "harmful evaluation prompts"): 0,
        ("attack rows", "sst2 evaluation rows"): 0,
    }
    # scored on its own training split: the 8 benign rows of the mix are all among the 40 scored rows
    same = tmp_path / "same"
    assert main(_evaluate(attack, same, data["eval_prompts"], *task, "--task-data", data["sst2_train"])) == 0
    assert _leaks(same)[("attack rows", "sst2 evaluation rows")] == 8
    capsys.readouterr()
    strict = [*task, "--task-data", data["sst2_train"], "--strict"]
    assert main(_evaluate(attack, tmp_path / "strict", data["eval_prompts"], *strict)) == 2
    assert "sst2 evaluation rows: 8 of 10 rows overlap" in capsys.readouterr().err
