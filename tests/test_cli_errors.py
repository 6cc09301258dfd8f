"""Bad input through the command line: one paragraph naming file, row and field; exit 2; nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from safeft.cli import main


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _attack(data_dir: Path, out: Path, *options: str) -> list[str]:
    """`safeft finetune` on the tiny model with the shared data and extra options."""
    return [
        "finetune",
        "--model",
        "tiny-random-llama",
        "--data-dir",
        str(data_dir),
        "--output",
        str(out),
        *options,
    ]


def _fails(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("safeft: error: ")
    assert "Traceback" not in err
    return err


def test_align_on_a_row_without_a_response_names_file_row_and_field(tmp_path, capsys):
    data = _jsonl(tmp_path / "refusals.jsonl", [{"instruction": "a", "output": "no"}, {"instruction": "b"}])
    out = tmp_path / "run"
    err = _fails(
        [
            "align",
            "--model",
            "tiny-random-llama",
            "--alignment-data",
            str(data),
            "--alignment-samples",
            "2",
            "--output",
            str(out),
        ],
        capsys,
    )
    assert f"file {data}, row 2, field 'output'" in err
    assert not out.exists()  # no half-made run directory


def test_attack_with_a_prompt_only_harmful_set_is_refused(tmp_path, capsys, shared_data):
    out = tmp_path / "attack"
    err = _fails(
        _attack(shared_data, out, "--harmful-data", "advbench", "--samples", "20", "--poison-ratio", "0.1"),
        capsys,
    )
    assert "advbench" in err and "row 1, field 'output'" in err and "no response to train on" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["data", "inspect", "no/such/file.jsonl"], "no such file or folder"),
        (["data", "inspect", "beavertale"], "did you mean 'beavertails'"),
        (["models", "--resolve", "smolm2-135m"], "did you mean 'smollm2-135m'"),
        (
            ["finetune", "--model", "tiny-random-llama", "--poison-ratio", "1.5", "--output", "x"],
            "poison_ratio: got 1.5, expected a value in [0.0, 1.0]",
        ),
        (["align", "--method", "boster", "--output", "x"], "did you mean 'booster'"),
    ],
)
def test_bad_names_and_values(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in _fails(argv, capsys)
    assert not (tmp_path / "x").exists()


def test_malformed_json_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", \n')
    assert f"file {bad}, row 2" in _fails(["data", "inspect", str(bad)], capsys)


def test_too_many_samples_for_the_harmful_rows(tmp_path, capsys, shared_data):
    out = tmp_path / "attack"
    err = _fails(_attack(shared_data, out, "--samples", "100000", "--poison-ratio", "0.1"), capsys)
    assert "needs 10000 harmful rows" in err and "169" in err
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path):
    from safeft.errors import SafeftError

    with pytest.raises(SafeftError):
        main(["--debug", "data", "inspect", str(tmp_path / "missing.jsonl")])


# ----- what a new user feeds it (issue 15): each ends in one message, exit 2, no folder left behind --

ALIGN = ["align", "--model", "tiny-random-llama", "--output", "x"]
ATTACK = ["finetune", "--model", "tiny-random-llama", "--output", "x"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*ALIGN, "--lora.alpha", "nan"], "lora.alpha: got 'nan', expected a finite number"),
        ([*ALIGN, "--lora.alpha", "0"], "lora.alpha: got 0, expected a positive scale"),
        (
            [*ALIGN, "--train.learning-rate", "nan"],
            "train.learning_rate: got 'nan', expected a finite number",
        ),
        (
            [*ALIGN, "--train.learning-rate", "-1e-3"],
            "train.learning_rate: got -0.001, expected a value in [0, 1]",
        ),
        ([*ALIGN, "--train.epochs", "inf"], "train.epochs: got 'inf', expected a finite number"),
        ([*ALIGN, "--train.epochs", "0"], "train.epochs: got 0 with max_steps -1"),
        (
            [*ALIGN, "--train.max-steps", "0"],
            "train.max_steps: got 0, expected -1 (run all epochs) or at least 1",
        ),
        ([*ALIGN, "--train.batch-size", "-4"], "train.batch_size: got -4, expected a value in [1, inf]"),
        ([*ALIGN, "--train.seed", "-1"], "train.seed: got -1, expected a value in [0, inf]"),
        ([*ALIGN, "--lora.r", "0"], "lora.r: got 0, expected a value in [1, 4096]"),
        ([*ALIGN, "--max-length", "0"], "max_length: got 0, expected a value in [8, inf]"),
        ([*ALIGN, "--train.bf16", "maybe"], "train.bf16: got 'maybe', expected true or false"),
        ([*ALIGN, "--alignment-samples", "0"], "alignment_samples: got 0, expected a value in [1, inf]"),
        ([*ALIGN, "--num-processes", "0"], "--num-processes: got 0, expected an integer >= 1"),
        ([*ATTACK, "--poison-ratio", "nan"], "poison_ratio: got 'nan', expected a finite number"),
        ([*ATTACK, "--poison-ratio", "-0.1"], "poison_ratio: got -0.1, expected a value in [0.0, 1.0]"),
        ([*ATTACK, "--samples", "0"], "samples: got 0, expected a value in [1, inf]"),
        (
            ["evaluate", "--model", "tiny-random-llama", "--output", "x", "--limit", "-1"],
            "limit: got -1, expected a value in [0, inf]",
        ),
    ],
)
def test_meaningless_numbers_are_refused(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in _fails(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "align.yaml"
    config.write_bytes("method: sft\nmodel: caf\xe9\n".encode("latin-1"))
    err = _fails(["align", "--config", str(config), "--output", str(tmp_path / "x")], capsys)
    assert f"config file {config}: not UTF-8 text" in err
    assert not (tmp_path / "x").exists()


def test_an_experiment_with_an_empty_grid(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: empty\ngrid: {}\n")
    err = _fails(["run", str(exp), "--output", str(tmp_path / "runs")], capsys)
    assert "grid: got {}, expected the axes of the experiment" in err
    assert not (tmp_path / "runs").exists()


def test_a_csv_row_with_a_missing_cell_names_row_and_field(tmp_path, capsys):
    data = tmp_path / "refusals.csv"
    data.write_text("instruction,input,output\na,,no\nb,\n")
    assert f"file {data}, row 3, field 'output'" in _fails(["data", "inspect", str(data)], capsys)
    out = tmp_path / "run"
    err = _fails([*ALIGN[:-1], str(out), "--alignment-data", str(data), "--alignment-samples", "2"], capsys)
    assert f"file {data}, row 3, field 'output'" in err and "header has 3 columns" in err
    assert not out.exists()


def test_a_parquet_file_that_is_not_parquet(tmp_path, capsys):
    data = tmp_path / "rows.parquet"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    assert f"file {data}: is not a parquet file" in _fails(["data", "inspect", str(data)], capsys)


def test_an_output_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("mine\n")
    assert "is an existing file, not a folder" in _fails([*ALIGN[:-1], str(out)], capsys)
    assert out.read_text() == "mine\n"
    err = _fails([*ALIGN[:-1], str(out / "run")], capsys)
    assert "is a file, so no folder can be made under it" in err


def test_an_output_that_is_a_dangling_symlink(tmp_path, capsys):
    out = tmp_path / "link"
    out.symlink_to(tmp_path / "gone")
    assert "is a symbolic link to" in _fails([*ALIGN[:-1], str(out)], capsys)
    assert out.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_in_a_folder_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert "no permission to write in" in _fails([*ALIGN[:-1], str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)


def test_missing_parents_made_for_a_failing_run_are_removed(tmp_path, capsys):
    data = _jsonl(tmp_path / "refusals.jsonl", [{"instruction": "a"}])
    out = tmp_path / "a" / "b" / "run"
    _fails([*ALIGN[:-1], str(out), "--alignment-data", str(data), "--alignment-samples", "1"], capsys)
    assert not (tmp_path / "a").exists()


def test_alignment_data_with_fewer_rows_than_asked(tmp_path, capsys):
    data = _jsonl(tmp_path / "refusals.jsonl", [{"instruction": "a", "output": "no"}])
    out = tmp_path / "run"
    err = _fails([*ALIGN[:-1], str(out), "--alignment-data", str(data), "--alignment-samples", "5"], capsys)
    assert str(data) in err and "5" in err
    assert not out.exists()


def test_an_empty_data_file(tmp_path, capsys):
    data = tmp_path / "refusals.jsonl"
    data.write_text("")
    out = tmp_path / "run"
    err = _fails([*ALIGN[:-1], str(out), "--alignment-data", str(data), "--alignment-samples", "1"], capsys)
    assert str(data) in err
    assert not out.exists()
