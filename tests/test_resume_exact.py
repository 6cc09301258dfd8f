"""Kill -9 at a random step, run the same command again: bitwise the uninterrupted result, for every method.

A resumed run restores more than Trainer's checkpoint (weights, optimizer, scheduler, data order,
RNG): each method's own batch streams (Booster's, RepNoise's and T-Vaccine's harmful batches,
Lisa's alignment batches) continue where they were, and a method's own state (T-Vaccine's sampling
probabilities and drawn blocks, Lisa's proximal anchor) is restored. The method options below make
every one of those matter within eight steps: streams wrap around, T-Vaccine re-measures and re-draws,
Lisa switches state, RepNoise subsamples tokens with the global RNG.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _stage_support import command, env, file_hashes
from safeft.cli import main
from safeft.methods import METHODS
from safeft.pipeline.demo_data import write_demo_data

STEPS = 8

METHOD_OPTIONS = {
    "booster": {"harmful_batch_size": 3},
    "booster-vaccine": {"harmful_batch_size": 3},
    "repnoise": {"harmful_batch_size": 3},
    "tvaccine": {"probability_steps": 3, "resample_steps": 2, "sampled_blocks": 2, "probe_batch_size": 3},
    "lisa": {"finetune_steps": 2, "alignment_steps": 1, "proximal_warmup_ratio": 0.0},
    "panacea": {"harmful_batch_size": 3},
    "tar": {"inner_steps": 2, "tamper_every": 1, "adversary_batch_size": 3, "heldout_batch_size": 3},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("resume-data")
    return write_demo_data(root, n_refusals=24, n_pool=8, n_attack=16, n_eval=8, n_task=40, n_task_eval=8)


def stage_config(data: dict[str, str], method: str) -> tuple[str, dict]:
    """(stage, config) of a few steps of `method` on the tiny model, a checkpoint after every step."""
    train = {
        "max_steps": STEPS,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "save_steps": 1,
        "progress": False,
    }
    options = {method.replace("-", "_"): METHOD_OPTIONS.get(method, {})}
    common = {"max_length": 32, "train": train, "methods": options}
    if METHODS[method].stage == "align":
        return "align", {
            **common,
            "method": method,
            "model": "tiny-random-llama",
            "alignment_data": data["refusals"],
            "alignment_samples": 24,
            "harmful_data": data["harmful_pool"],
            "harmful_samples": 8,
        }
    return "finetune", {
        **common,
        "method": method,
        "model": "tiny-random-llama",
        "task_data": data["sst2_train"],
        "harmful_data": data["attack"],
        "eval_prompts": data["eval_prompts"],
        "samples": 20,
        "poison_ratio": 0.2,
        "alignment_data": data["refusals"],
        "alignment_samples": 24,
        "defense_harmful_data": data["harmful_pool"],
        "defense_harmful_samples": 8,
        "train": {**train, "warmup_ratio": 0.0},
    }


def _losses(run: Path) -> dict[int, tuple[float, float]]:
    """(loss, grad norm) of every logged step, from the run's trainer state (which spans the resume)."""
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return {h["step"]: (h["loss"], h["grad_norm"]) for h in history if "loss" in h}


def _written(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def kill_at_checkpoint(argv: list[str], run: Path, step: int) -> None:
    """Start `safeft ARGV` and SIGKILL it once the checkpoint of `step` is complete."""
    proc = subprocess.Popen(command(*argv), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline and not _written(marker):
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no cleanup of any kind
    finally:
        _, err = proc.communicate()
    assert marker.is_file(), err.decode()[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running", "the run finished before it was killed; raise STEPS"


# SFT and Vaccine carry no state beyond Trainer's, and Booster+Vaccine's stream is Booster's: these
# run under `-m slow` (a minute each on a loaded 2-core machine). Booster, T-Vaccine, RepNoise and
# Lisa, each with state of its own, run every time.
SLOW = {"sft", "vaccine", "booster-vaccine"}


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=[pytest.mark.slow] if m in SLOW else []) for m in METHODS]
)
def test_killed_run_resumes_bitwise(method, data, tmp_path):
    stage, config = stage_config(data, method)
    config_file = tmp_path / f"{method}.yaml"
    config_file.write_text(yaml.safe_dump(config))

    reference = tmp_path / "uninterrupted"
    assert main([stage, "--config", str(config_file), "--output", str(reference)]) == 0

    killed = tmp_path / "killed"
    kill_step = random.Random(method).randint(1, STEPS - 3)
    argv = [stage, "--config", str(config_file), "--output", str(killed)]
    kill_at_checkpoint(argv, killed, kill_step)
    assert main(argv) == 0

    resumed_from = json.loads((killed / "metrics.json").read_text())["resumed_from"]
    assert resumed_from and int(resumed_from.rsplit("-", 1)[1]) >= kill_step
    assert file_hashes(killed) == file_hashes(reference) != {}
    # every step after the resume took exactly the uninterrupted run's loss and gradient norm
    after = _losses(killed)
    assert after and all(step > kill_step for step in after)
    assert {step: _losses(reference)[step] for step in after} == after


def test_a_checkpoint_cut_short_by_the_kill_is_passed_over(tmp_path):
    """A kill while Trainer writes trainer_state.json (in place) leaves it empty: resume from the one before."""
    from safeft.stages.runs import RunDir

    for step, state in ((2, '{"global_step": 2}'), (3, "")):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert RunDir(tmp_path).latest_checkpoint() == str(tmp_path / "checkpoints" / "checkpoint-2")
