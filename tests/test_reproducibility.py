"""Same command, same numbers: a stage's result is a function of its config alone.

The LoRA adapter's initialisation, the data order and every method's own draws derive from the
stage's seed, set before the model is built. Two fresh processes give byte-identical adapters and
identical metrics (times and memory aside), and inside one process a stage does not depend on which
stages ran before it (a grid with a cached parent gives the bytes of a grid run from scratch).
"""

from __future__ import annotations

import re
import shutil

import pytest

from _stage_support import align_argv, file_hashes, metrics, safeft, tiny_experiment
from safeft.pipeline.demo_data import write_demo_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("repro-data")
    return write_demo_data(root, n_refusals=24, n_pool=8, n_attack=16, n_eval=8, n_task=40, n_task_eval=8)


def test_the_same_alignment_twice_in_fresh_processes_is_byte_identical(data, tmp_path):
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        done = safeft(*align_argv(data, out, "sft", "--train.max-steps", "3"))
        assert done.returncode == 0, done.stderr[-2000:]
    first, second = (file_hashes(r) for r in runs)
    assert first and first == second
    assert metrics(runs[0]) == metrics(runs[1])
    # the numbers are real: three logged steps with a finite loss and gradient norm
    steps = [h for h in metrics(runs[0])["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]


def _grid(data: dict[str, str], output) -> dict:
    """One SFT and one Booster alignment, each attacked once and evaluated (with over-refusal prompts)."""
    train = {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "progress": False}
    return tiny_experiment(
        data,
        output,
        {
            "base": {
                "align": {"max_length": 32, "train": train},
                "finetune": {"max_length": 32, "train": train},
                "evaluate": {"harmless_prompts": data["harmless"], "harmless_limit": 2},
            },
            "grid": {
                "poison_ratios": [0.25],
                "seeds": [5],
                "include_no_defense": False,
                "include_unattacked": False,
            },
        },
    )


def _all_results(runs) -> dict[str, object]:
    """Every stage's weights hashes and computed metrics, by stage folder."""
    out = {}
    for stage in sorted(p for kind in ("align", "finetune", "evaluate") for p in (runs / kind).iterdir()):
        # folder names end in the config's hash, which names the parent run's folder
        label = stage.name.rsplit("-", 1)[0]
        out[f"{stage.parent.name}/{label}"] = (file_hashes(stage), metrics(stage))
    return out


def test_a_grid_gives_the_same_bytes_whichever_stages_are_cached(data, tmp_path):
    from safeft.pipeline.experiment import ExperimentConfig, execute

    fresh = tmp_path / "fresh"
    assert execute(ExperimentConfig.from_dict(_grid(data, fresh))) == 0
    reference = _all_results(fresh)
    assert len(reference) == 6

    # The same grid in this process with the SFT alignment cached and everything else rerun: Booster's
    # alignment now runs first in the process, not after three other stages. Without a seeded start
    # its adapter would be drawn from whatever random state the stages before it left behind.
    partial = tmp_path / "cached"
    shutil.copytree(fresh, partial)
    for stage in [p for kind in ("align", "finetune", "evaluate") for p in (partial / kind).iterdir()]:
        if not stage.name.startswith("sft-") or stage.parent.name != "align":
            shutil.rmtree(stage)
    assert execute(ExperimentConfig.from_dict(_grid(data, partial))) == 0
    got = _all_results(partial)
    assert got.keys() == reference.keys()
    for stage, (hashes, numbers) in reference.items():
        assert got[stage][0] == hashes, stage
        assert _located(got[stage][1], partial) == _located(numbers, fresh), stage


def _located(value, runs):
    """Paths recorded in metrics, relative to their runs folder and without the folder-name hash

    (a stage folder's name ends in its config's hash, which names the parent run's folder)."""
    if isinstance(value, dict):
        return {k: _located(v, runs) for k, v in value.items()}
    if isinstance(value, list):
        return [_located(v, runs) for v in value]
    if isinstance(value, str):
        return re.sub(r"-[0-9a-f]{8}(?=/|$)", "", value.replace(str(runs), "RUNS"))
    return value
