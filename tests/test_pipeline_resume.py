"""Kill -9 in the middle of an experiment, run the same command again: the result equals an uninterrupted run's."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _stage_support import command, env, tiny_experiment
from safeft.pipeline.demo_data import write_demo_data
from safeft.pipeline.report import metric

pytestmark = pytest.mark.slow  # three subprocess runs of a tiny experiment: ~1 minute


def _experiment(root: Path, data: dict[str, str], output: Path) -> Path:
    """SFT aligned for 40 steps and attacked for 24, a checkpoint every 4: room to interrupt each."""
    train = {"batch_size": 4, "save_steps": 4, "progress": False, "logging_steps": 1, "learning_rate": 1e-3}
    exp = tiny_experiment(
        data,
        output,
        {
            "base": {
                "align": {"alignment_samples": 32, "train": {**train, "max_steps": 40}},
                "finetune": {"samples": 32, "train": {**train, "max_steps": 24}},
                "evaluate": {"limit": 6, "task_limit": 6, "max_new_tokens": 6, "batch_size": 6},
            },
            "grid": {
                "methods": ["sft"],
                "poison_ratios": [0.25],
                "seeds": [3],
                "include_no_defense": False,
                "include_unattacked": False,
            },
        },
    )
    path = root / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _stage_dir(runs: Path, kind: str) -> Path:
    # the folder of the one stage of `kind` (a killed run leaves its lock file `.NAME.lock` beside it)
    (path,) = (p for p in (runs / kind).iterdir() if p.is_dir())
    return path


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    (weights,) = (run / "adapter").glob("*.safetensors")
    return load_file(weights)


def _losses(run: Path) -> dict[int, float]:
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_demo_data(
        root / "data", n_refusals=40, n_pool=8, n_attack=24, n_eval=8, n_task=48, n_task_eval=8
    )
    reference = root / "reference"
    subprocess.run(
        command("run", str(_experiment(root, data, reference))),
        check=True,
        env=env(),
        capture_output=True,
        timeout=600,
    )
    return root, data, reference


@pytest.mark.parametrize("kill_in", ["align", "finetune"])
def test_killed_run_resumes_to_the_same_result(setup, kill_in):
    root, data, reference = setup
    runs = root / f"killed-in-{kill_in}"
    exp = _experiment(root, data, runs)
    proc = subprocess.Popen(
        command("run", str(exp)), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list((runs / kill_in).glob("*/checkpoints/checkpoint-*/trainer_state.json")):
                break
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup of any kind
    finally:
        proc.wait()
    stage = _stage_dir(runs, kill_in)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "running", "the run finished before it could be killed; raise max_steps"
    assert not (runs / "evaluate").exists() or not list((runs / "evaluate").glob("*/metrics.json"))

    rerun = subprocess.run(command("run", str(exp)), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    if kill_in == "finetune":
        assert "(cached, skipped)" in rerun.stderr  # the finished alignment was not redone

    for kind in ("align", "finetune"):
        ref, got = _adapter(_stage_dir(reference, kind)), _adapter(_stage_dir(runs, kind))
        assert ref.keys() == got.keys()
        for name in ref:
            assert got[name].allclose(ref[name], rtol=1e-4, atol=1e-6), (kind, name)
        ref_loss, got_loss = _losses(_stage_dir(reference, kind)), _losses(_stage_dir(runs, kind))
        assert max(ref_loss) == max(got_loss)  # same number of steps
        for step in got_loss:  # the steps the resumed process logged
            assert got_loss[step] == pytest.approx(ref_loss[step], rel=1e-4)
    ref_metrics = json.loads((_stage_dir(reference, "evaluate") / "metrics.json").read_text())
    got_metrics = json.loads((_stage_dir(runs, "evaluate") / "metrics.json").read_text())
    for key in (
        "hs",
        "hs_plus",
        "fa_strict",
        "refusal_rate",
        "n_harmful",
        "n_task",
    ):
        assert metric(got_metrics, key) == pytest.approx(metric(ref_metrics, key)), key
    assert (runs / "results.md").is_file()
