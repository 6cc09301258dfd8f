"""`safeft run --jobs N` / `--launcher`: device sets, dependency order, failures that skip only descendants."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from safeft.pipeline import experiment as ex
from safeft.pipeline import scheduler as sch
from test_experiment import build


def test_gpus_are_split_evenly_between_jobs_and_shared_round_robin_when_too_few():
    slots = sch.device_slots(2, gpus=["0", "1", "2", "3"], cores=8)
    assert [s.gpus for s in slots] == [["0", "1"], ["2", "3"]]
    assert slots[1].environment()["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert [s.gpus for s in sch.device_slots(3, gpus=["4", "7"], cores=8)] == [["4"], ["7"], ["4"]]


def test_cpu_threads_are_split_evenly_between_jobs():
    slots = sch.device_slots(2, gpus=[], cores=8)
    assert [s.threads for s in slots] == [4, 4]
    assert slots[0].environment() == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert [s.threads for s in sch.device_slots(3, gpus=[], cores=2)] == [1, 1, 1]


@dataclass
class FakeHandle:
    stage_id: str
    outcome: str
    polls_left: int = 2  # "runs" for two polls

    def poll(self) -> str | None:
        self.polls_left -= 1
        return None if self.polls_left > 0 else self.outcome

    def cancel(self) -> None:
        pass


@dataclass
class FakeLauncher:
    """Records the order stages start in and how many run at once; fails the stages it is told to."""

    failing: set[str]
    concurrency: int | None = 2
    submits_ahead: bool = False
    started: list[str] = field(default_factory=list)
    peak_running: int = 0
    grid: sch.GridRun | None = None

    def start(self, stage, slot, parents):
        assert slot is not None
        self.started.append(stage.id)
        if self.grid is not None:
            self.peak_running = max(self.peak_running, len(self.grid.running) + 1)
            assert all(self.grid.state[d] in ("done", "cached") for d in stage.depends_on)
        return FakeHandle(stage.id, "boom" if stage.id in self.failing else "")


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(sch, "POLL_SECONDS", 0.0)


def run_fake(stages, failing=(), jobs=2):
    launcher = FakeLauncher(set(failing), concurrency=jobs)
    grid = sch.GridRun(stages, launcher, sch.device_slots(jobs, gpus=[], cores=2))
    launcher.grid = grid
    grid.loop()
    return grid, launcher


def test_every_stage_starts_after_its_parents_with_at_most_jobs_at_once(tmp_path):
    stages = build(tmp_path)
    grid, launcher = run_fake(stages, jobs=2)
    assert sorted(launcher.started) == sorted(st.id for st in stages)
    assert launcher.peak_running == 2
    assert set(grid.state.values()) == {"done"}
    assert not grid.errors


def test_a_failed_stage_skips_its_descendants_only_and_the_summary_says_how_to_resume(tmp_path):
    stages = build(tmp_path)
    failed = next(st for st in stages if st.kind == "align" and st.labels["method"] == "sft")
    descendants = {failed.id}
    for st in stages:  # parents come first
        if any(d in descendants for d in st.depends_on):
            descendants.add(st.id)
    grid, launcher = run_fake(stages, failing={failed.id})
    assert grid.state[failed.id] == "failed"
    assert {sid for sid, v in grid.state.items() if v == "skipped"} == descendants - {failed.id}
    assert all(grid.state[st.id] == "done" for st in stages if st.id not in descendants)
    assert not set(launcher.started) & (descendants - {failed.id})
    summary = grid.summary("safeft run exp.yaml --jobs 2")
    assert f"failed   {failed.id}: boom" in summary
    assert "safeft run exp.yaml --jobs 2" in summary
    assert f"1 failed, {len(descendants) - 1} skipped" in summary


def test_cached_stages_are_not_started_and_their_measured_times_give_an_eta(tmp_path):
    import json

    stages = build(tmp_path)
    for st in stages:
        st.cached = st.kind == "align"
        if st.cached:
            st.path.mkdir(parents=True)
            (st.path / "metrics.json").write_text(json.dumps({"wall_time_s": 30.0}))
    launcher = FakeLauncher(set())
    grid = sch.GridRun(stages, launcher, sch.device_slots(2, gpus=[], cores=2))
    assert grid.eta() == "ETA after the first evaluate stage"
    grid.durations["evaluate"] = [10.0, 20.0, 30.0]  # median 20 s
    grid.durations["finetune"] = [60.0]
    n_eval = sum(st.kind == "evaluate" for st in stages)
    n_ft = sum(st.kind == "finetune" for st in stages)
    assert grid.eta() == f"ETA {sch._minutes((n_eval * 20 + n_ft * 60) / 2)}"
    launcher.grid = grid
    grid.loop()
    assert not any(sid.startswith("align/") for sid in launcher.started)
    assert grid.durations["align"] == [30.0, 30.0, 30.0, 30.0]


FAKE_SBATCH = """#!/bin/bash
# sbatch stand-in: answers with an increasing job id
n=$(( $(cat "$(dirname "$0")/counter" 2>/dev/null || echo 100) + 1 )); echo $n > "$(dirname "$0")/counter"
echo "Submitted batch job $n"
"""


def test_slurm_gets_every_stage_at_once_with_its_parents_as_afterok_and_the_file_s_resources(
    tmp_path, monkeypatch
):
    """Real submitit with `sbatch`/`srun` stand-ins on PATH: the sbatch scripts it writes are checked."""
    from _stage_support import experiment_dict

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/bash\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    exp = ex.ExperimentConfig.from_dict(
        {
            **experiment_dict(tmp_path, methods=["sft"], seeds=[1], poison_ratios=[0.1]),
            "launcher": {
                "partition": "gpu",
                "gpus_per_stage": 1,
                "time_min": 90,
                "mem_gb": 32,
                "slurm_extra": {"account": "lab"},
            },
        }  # fmt: skip
    )
    assert exp.launcher == ex.LauncherSettings("gpu", 1, None, 90, 32, {"account": "lab"})
    stages = ex.plan(ex.expand(exp))
    launcher = sch.SubmititLauncher("slurm", ex.write_index(exp, stages), exp.launcher, num_processes=1)
    grid = sch.GridRun(stages, launcher, [None])
    grid.start_ready()
    assert set(grid.state.values()) == {"running"}  # all submitted in one pass, children included
    job_id = {sid: handle.job.job_id for sid, handle in grid.handles.items()}
    for st in stages:
        logs = tmp_path / "runs" / "logs" / st.id  # beside the run dir, which the stage claims
        script = (logs / f"{job_id[st.id]}_submission.sh").read_text()
        for line in ("--partition=gpu", "--gpus-per-node=1", "--time=90", "--mem=32GB", "--account=lab"):
            assert f"#SBATCH {line}\n" in script, (st.id, line)
        assert f"#SBATCH --output={logs}/%j_0_log.out\n" in script
        assert not st.path.exists()  # the run dir is left to the stage
        if st.depends_on:
            parents = ":".join(job_id[d] for d in st.depends_on)
            assert f"#SBATCH --dependency=afterok:{parents}\n" in script
        else:
            assert "--dependency" not in script


def test_launcher_section_is_validated_like_the_rest_of_the_file(tmp_path):
    from _stage_support import experiment_dict
    from safeft.errors import ConfigError
    from safeft.pipeline.experiment import ExperimentConfig

    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_dict(
            {**experiment_dict(tmp_path), "launcher": {"gpus_per_stage": -1, "partiton": "gpu"}}
        )
    text = str(e.value)
    assert "launcher.gpus_per_stage" in text and "did you mean 'launcher.partition'" in text
