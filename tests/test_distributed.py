"""Data parallelism: 2 processes x batch 4 must compute what 1 process x batch 8 computes.

The workers (tests/distributed_worker.py) run under `torchrun --nproc_per_node 2` (gloo on CPU) on
the tiny random Llama, with rows of identical token counts (so the mean over 8 rows equals the mean
of two means over 4) and plain SGD (so the update is the gradient itself). Each worker run trains
several methods one after another and is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safeft.errors import SafeftError
from safeft.launch import inside_launched_process, launch_command, strip_option

WORKER = Path(__file__).with_name("distributed_worker.py")
TOL = 1e-5


def _run_worker(processes: int, *args: str, timeout: int = 240) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            str(WORKER),
            *args,
        ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


def _load(folder: Path, tag: str, world: int, rank: int = 0) -> dict:
    return torch.load(folder / f"{tag}-world{world}-rank{rank}.pt")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


ONE_STEP_METHODS = "sft,booster,vaccine,vaccine-global"
THREE_STEP_METHODS = ("tvaccine", "lisa", "repnoise", "booster-vaccine")


@pytest.fixture(scope="module")
def one_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One optimizer step of each method: 1 process x batch 8 and 2 processes x batch 4."""
    out = tmp_path_factory.mktemp("one_step")
    _run_worker(1, "train", str(out), ONE_STEP_METHODS)
    _run_worker(2, "train", str(out), ONE_STEP_METHODS)
    return out


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three steps on 2 processes: T-Vaccine (new blocks every step), Lisa (2 fine-tune steps, then 1
    alignment step), and the methods whose batch statistics do not split (RepNoise's MMD) or that
    run four passes (Booster+Vaccine)."""
    out = tmp_path_factory.mktemp("three_steps")
    _run_worker(2, "train", str(out), ",".join(THREE_STEP_METHODS), "--steps", "3")
    return out


def _assert_same_update(folder: Path, tag: str) -> None:
    one, two = _load(folder, tag, 1), _load(folder, tag, 2)
    update = _max_diff(one["weights"], one["initial"])
    assert update > 100 * TOL, (
        f"{tag}: the step barely changed the weights ({update}); the comparison would prove nothing"
    )
    assert _max_diff(one["weights"], two["weights"]) < TOL


def test_sft_two_processes_batch_4_equal_one_process_batch_8(one_step):
    _assert_same_update(one_step, "sft")


def test_booster_two_processes_equal_one_process(one_step):
    # ||g_h|| and w' come from the all-reduced gradient of the global harmful batch, and rank r
    # takes slice r of each global harmful batch: the same rows as one process with batch 8.
    _assert_same_update(one_step, "booster")


def test_booster_with_gradient_accumulation_equal_one_process(tmp_path):
    # Micro-batches before the last run under DDP's no_sync; Booster all-reduces g_h itself there.
    _run_worker(1, "train", str(tmp_path), "booster", "--accumulation", "2")
    _run_worker(2, "train", str(tmp_path), "booster", "--accumulation", "2")
    _assert_same_update(tmp_path, "booster-ga2")


def test_vaccine_global_norm_equals_one_process(one_step):
    # perturbation_norm=global: sqrt of the all-reduced sum of ||G_l||^2 over processes.
    _assert_same_update(one_step, "vaccine-global")


def test_vaccine_local_norm_is_per_process(one_step):
    # The reference's meaning: each process scales its own batch's G to norm rho (a different step).
    one, two = _load(one_step, "vaccine", 1), _load(one_step, "vaccine", 2)
    assert _max_diff(one["weights"], two["weights"]) > 10 * TOL


@pytest.mark.parametrize("tag", ONE_STEP_METHODS.split(","))
def test_every_rank_holds_the_same_weights(one_step, tag):
    assert _max_diff(_load(one_step, tag, 2, 0)["weights"], _load(one_step, tag, 2, 1)["weights"]) == 0.0


@pytest.mark.parametrize("tag", THREE_STEP_METHODS)
def test_every_rank_holds_the_same_weights_after_three_steps(three_steps, tag):
    rank0, rank1 = _load(three_steps, tag, 2, 0), _load(three_steps, tag, 2, 1)
    assert _max_diff(rank0["weights"], rank0["initial"]) > 0
    assert _max_diff(rank0["weights"], rank1["weights"]) == 0.0


def test_tvaccine_draws_the_same_blocks_on_every_rank(three_steps):
    rank0, rank1 = _load(three_steps, "tvaccine", 2, 0), _load(three_steps, "tvaccine", 2, 1)
    drawn0 = [r["drawn"] for r in rank0["trace"]]
    assert len(drawn0) == 3 and all(len(d) == 2 for d in drawn0)
    assert drawn0 == [r["drawn"] for r in rank1["trace"]]
    assert [r["q"] for r in rank0["trace"]] == [r["q"] for r in rank1["trace"]]
    # Undrawn blocks get no gradient; DDP (find_unused_parameters) must still keep the replicas equal.
    assert _max_diff(rank0["weights"], rank1["weights"]) == 0.0


def test_lisa_switches_state_at_the_same_step_on_every_rank(three_steps):
    phases = [[r["phase"] for r in _load(three_steps, "lisa", 2, rank)["trace"]] for rank in (0, 1)]
    assert phases[0] == phases[1] == ["alignment", "finetune", "finetune"]  # starts aligned, as the reference
    assert (
        _max_diff(_load(three_steps, "lisa", 2, 0)["weights"], _load(three_steps, "lisa", 2, 1)["weights"])
        == 0.0
    )


def test_generation_split_across_two_processes_matches_one_process(tmp_path):
    pytest.importorskip("safeft.evaluation.generate")
    _run_worker(1, "generate", str(tmp_path))
    _run_worker(2, "generate", str(tmp_path))
    one = json.loads((tmp_path / "answers-world1-rank0.json").read_text())
    assert len(one) == 7 and all(one) and len(set(one)) > 1
    for rank in (0, 1):  # every process gets all answers, in the original order
        assert json.loads((tmp_path / f"answers-world2-rank{rank}.json").read_text()) == one


# ----- without processes --------------------------------------------------------------------------


def test_split_and_gather_in_one_process_is_fn():
    from safeft.evaluation.distributed import split_and_gather

    assert split_and_gather(["a", "b", "c"], lambda xs: [x.upper() for x in xs]) == ["A", "B", "C"]


def test_launch_command_reruns_the_stage_under_torchrun_without_num_processes():
    cmd = launch_command(["align", "--config", "a.yaml", "--num-processes", "4", "--train.seed", "3"], 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert cmd[-8:] == ["-m", "safeft.cli", "--", "align", "--config", "a.yaml", "--train.seed", "3"]
    assert strip_option(["evaluate", "--num-processes=2"], "--num-processes") == ["evaluate"]


def test_inside_launched_process_reads_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not inside_launched_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert inside_launched_process()


def test_cli_num_processes_dispatches_to_the_launcher(monkeypatch):
    import safeft.launch
    from safeft import cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = []
    monkeypatch.setattr(safeft.launch, "launch", lambda argv, n: calls.append((argv, n)) or 0)
    argv = ["evaluate", "--model", "tiny-random-llama", "--output", "x", "--num-processes", "2"]
    assert cli.main(argv) == 0
    assert calls == [(argv, 2)]


@pytest.mark.parametrize(
    "method,supported",
    [
        ("sft", True),
        ("repnoise", True),
        ("booster", False),
        ("vaccine", False),
        ("tvaccine", False),
        ("lisa", False),
    ],
)
def test_methods_that_edit_gradients_are_refused_under_fsdp(method, supported):
    from safeft.methods import METHODS
    from safeft.stages.training import check_parallelism

    trainer = object.__new__(METHODS[method].trainer_cls)  # only the class and the two flags matter
    trainer.is_fsdp_enabled, trainer.is_deepspeed_enabled = True, False
    if supported:
        check_parallelism(trainer, method)
    else:
        with pytest.raises(SafeftError, match="not supported under FSDP"):
            check_parallelism(trainer, method)
    trainer.is_fsdp_enabled = False  # plain DDP: everything runs
    check_parallelism(trainer, method)
