"""Bad input through the command line: one paragraph naming file, row and field; exit 2; nothing left behind."""

from __future__ import annotations

import json
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
