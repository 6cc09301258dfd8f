"""What safeft writes into, and what it refuses: a run folder protects what is in it.

safeft writes only into folders it creates, empty ones, or an unfinished run of the same stage
and config. Everything else is refused before a byte is written, with a message that says what
is there and how to proceed; `--overwrite` replaces a run only once the new one is complete. One
lock per run folder keeps two processes out of the same stage.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from _stage_support import align_argv, command, env, finetune_argv
from safeft.cli import main
from safeft.pipeline.demo_data import write_demo_data
from safeft.stages.runs import lock_path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("folders-data")
    return write_demo_data(root, n_refusals=24, n_pool=8, n_attack=16, n_eval=8, n_task=40, n_task_eval=8)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished one-step SFT alignment."""
    out = tmp_path_factory.mktemp("finished") / "sft"
    assert main(align_argv(data, out, "sft", "--train.max-steps", "1")) == 0
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("safeft: error: ") and "Traceback" not in err
    return err


def test_a_folder_of_the_users_is_never_written_into(data, tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "adapter").mkdir(parents=True)
    (out / "config.yaml").write_text("my own notes\n")
    (out / "adapter" / "weights.bin").write_bytes(b"\x00" * 8)
    before = _snapshot(out)
    err = _refused(align_argv(data, out, "sft", "--train.max-steps", "1"), capsys)
    assert "not made by safeft" in err
    # not even with --overwrite: safeft never deletes what it did not make
    _refused(align_argv(data, out, "sft", "--train.max-steps", "1", "--overwrite"), capsys)
    assert _snapshot(out) == before


def test_an_empty_folder_is_used_and_kept(data, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    argv = align_argv(data, out, "sft", "--train.max-steps", "1")
    argv[argv.index("--alignment-data") + 1] = str(bad)
    _refused(argv, capsys)
    assert out.is_dir() and not any(out.iterdir())  # what the failed start wrote is gone, the folder stays


def test_a_finished_run_of_another_config_is_refused_and_untouched(data, finished, capsys):
    before = _snapshot(finished)
    err = _refused(align_argv(data, finished, "sft", "--train.max-steps", "2"), capsys)
    assert "finished align run of another configuration" in err
    assert "train.max_steps: 1 -> 2" in err and "--overwrite" in err
    assert _snapshot(finished) == before


def test_the_same_command_reuses_a_finished_run(data, finished, capsys):
    before = _snapshot(finished)
    assert main(align_argv(data, finished, "sft", "--train.max-steps", "1")) == 0
    assert _snapshot(finished) == before


def test_a_run_of_another_stage_is_refused(data, finished, tmp_path, capsys):
    argv = finetune_argv(data, finished, "--samples", "8")
    before = _snapshot(finished)
    err = _refused(argv, capsys)
    assert "holds a safeft align run (finished), not a finetune run" in err
    assert _snapshot(finished) == before


def test_from_run_and_run_must_be_runs_with_weights(data, finished, tmp_path, capsys):
    evaluation = tmp_path / "eval"
    evaluate = [
        "evaluate",
        "--judge",
        "keyword",
        "--harmful-prompts",
        data["eval_prompts"],
        "--limit",
        "2",
        "--harmless-limit",
        "0",
        "--max-new-tokens",
        "2",
    ]
    assert main([*evaluate, "--run", str(finished), "--output", str(evaluation)]) == 0
    capsys.readouterr()
    err = _refused([*evaluate, "--run", str(evaluation), "--output", str(tmp_path / "e2")], capsys)
    assert "is a evaluate run, which has no model of its own" in err
    attack = ["finetune", "--from-run", str(evaluation), "--task-data", data["sst2_train"]]
    err = _refused([*attack, "--output", str(tmp_path / "a")], capsys)
    assert "is a evaluate run" in err
    assert not (tmp_path / "e2").exists() and not (tmp_path / "a").exists()


def test_overwrite_replaces_only_once_the_new_run_is_complete(data, finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _snapshot(run)
    # a failing replacement (bad data) leaves the finished run as it was
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    argv = align_argv(data, run, "sft", "--train.max-steps", "2", "--overwrite")
    argv[argv.index("--alignment-data") + 1] = str(bad)
    _refused(argv, capsys)
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "run"]
    # a successful one replaces it, and the manifest names the weights at their final place
    assert main(align_argv(data, run, "sft", "--train.max-steps", "2", "--overwrite")) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert manifest["weights"] == [{"kind": "adapter", "path": str((run / "adapter").resolve())}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "run"]


def test_a_checkpoint_of_another_config_is_not_resumed(data, finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "interrupted"
    shutil.copytree(finished, run)
    # what a run killed after its first checkpoint leaves: status running, a complete checkpoint
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (run / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    err = _refused(
        align_argv(data, run, "sft", "--train.max-steps", "1", "--train.learning-rate", "1e-4"), capsys
    )
    assert "checkpoint written under another configuration" in err
    assert "train.learning_rate: 0.01 -> 0.0001" in err


def test_two_processes_never_run_the_same_stage(data, tmp_path):
    out = tmp_path / "run"
    argv = align_argv(data, out, "booster", "--train.max-steps", "200", "--train.save-steps", "1000")
    first = subprocess.Popen(command(*argv), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (out / "manifest.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_path(out).is_file()
        second = subprocess.run(command(*argv), env=env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"in use by another safeft process (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first one was not disturbed
    finally:
        first.kill()  # SIGKILL: its lock file stays behind, stale
        first.wait()
    assert lock_path(out).is_file()
    # A lock whose process is gone (same host) is stale: the next command takes it over and runs.
    third = subprocess.run(
        command(*align_argv(data, out, "booster", "--train.max-steps", "2", "--train.save-steps", "1000")),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-2000:]
    assert not lock_path(out).exists()
