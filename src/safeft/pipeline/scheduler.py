"""Run a grid's stages concurrently: `safeft run --jobs N` (subprocesses), `--launcher local|slurm` (submitit).

A stage starts once its parents are done, in its own process, on its own device set (a `Slot`):
`CUDA_VISIBLE_DEVICES` on a GPU machine, an even share of the CPU threads otherwise. The process
re-expands the experiment from the runs folder's `experiment.json` and runs the stage by id (so
every launcher runs exactly what the sequential run would), holding the stage's lock
(`safeft.stages.runs.run_lock`, waited for). A failed stage does not stop the others; its descendants are
skipped. One progress line per change: running, done, cached, failed, and an ETA from measured stage
times (those of this run and the `wall_time_s` of finished stages in the runs folder).

Slurm (`--launcher slurm`) gets every stage as one job at once, each with `afterok` on its parents'
jobs, so the grid goes on if this process stops; a job stopped at its time limit or pre-empted is
requeued by submitit and the stage resumes from its checkpoint. submitit's local executor
(`--launcher local`) has no dependencies: its jobs are started here as their parents finish.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from safeft.errors import SafeftError
from safeft.io import read_json
from safeft.pipeline.experiment import ExperimentConfig, LauncherSettings, Stage, expand, run_stage

log = logging.getLogger("safeft")

LAUNCHERS = ("local", "slurm")
POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 60.0  # a progress line at least this often while stages run
STAGE_FAILED = 1  # the exit code of a grid with failed stages


# ----- device sets ------------------------------------------------------------------------------
@dataclass
class Slot:
    """The devices of one concurrently running stage."""

    gpus: list[str]  # CUDA device ids, [] on a CPU machine
    threads: int  # torch intra-op threads (OMP_NUM_THREADS)

    def environment(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use (ids as the children must name them)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(jobs: int, gpus: list[str] | None = None, cores: int | None = None) -> list[Slot]:
    """`jobs` slots: the GPUs split evenly (round-robin, shared, when there are fewer GPUs than jobs), else the cores."""
    gpus = visible_gpus() if gpus is None else gpus
    cores = cores or len(os.sched_getaffinity(0))
    threads = max(1, cores // jobs)
    if not gpus:
        return [Slot([], threads) for _ in range(jobs)]
    if len(gpus) >= jobs:
        per_job = len(gpus) // jobs
        return [Slot(gpus[i * per_job : (i + 1) * per_job], threads) for i in range(jobs)]
    return [Slot([gpus[i % len(gpus)]], threads) for i in range(jobs)]


# ----- running one stage by id (the child's side) ------------------------------------------------
def stage_from_index(index_path: str | Path, stage_id: str) -> Stage:
    """The stage `stage_id` of the experiment recorded in a runs folder's experiment.json."""
    index = read_json(index_path)
    exp = ExperimentConfig.from_dict(index["experiment"], source=str(index_path))
    stages = {st.id: st for st in expand(exp)}
    if stage_id not in stages:
        raise SafeftError(
            f"{index_path}: no stage {stage_id!r} in this experiment (it has {len(stages)} stages)"
        )
    return stages[stage_id]


def run_indexed_stage(
    index_path: str, stage_id: str, threads: int, num_processes: int = 1, strict: bool = False
) -> bool:
    """Run one stage of a recorded experiment with `threads` CPU threads; returns whether it ran."""
    import torch

    torch.set_num_threads(threads)
    return run_stage(stage_from_index(index_path, stage_id), num_processes, strict)


class StageJob:
    """The callable a submitit job runs; on pre-emption or time-out it is resubmitted as is, and the
    stage resumes from its newest checkpoint."""

    def __init__(
        self, index_path: str, stage_id: str, threads: int, num_processes: int, strict: bool, cwd: str
    ):
        self.args = (index_path, stage_id, threads, num_processes, strict)
        self.cwd = cwd  # the stage paths are relative to where `safeft run` was started

    def __call__(self) -> bool:
        os.chdir(self.cwd)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return run_indexed_stage(*self.args)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def main(argv: list[str] | None = None) -> int:
    """`python -m safeft.pipeline.scheduler INDEX STAGE_ID`: the process of one stage under `--jobs`."""
    parser = argparse.ArgumentParser(prog="python -m safeft.pipeline.scheduler")
    parser.add_argument("index")
    parser.add_argument("stage_id")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_indexed_stage(args.index, args.stage_id, args.threads, args.num_processes, args.strict)
    except SafeftError as e:
        print(f"safeft: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


# ----- launchers (the parent's side) ------------------------------------------------------------
def job_log_dir(index_path: Path, stage: Stage) -> Path:
    """Where a stage's job writes its output: `<runs>/logs/<stage id>`. Not inside the run directory,
    which is the stage's own to claim (safeft writes only into empty folders and its own runs)."""
    return index_path.parent / "logs" / stage.id


class Handle(Protocol):
    def poll(self) -> str | None:
        """None while running; then "" on success or what went wrong."""

    def cancel(self) -> None: ...


@dataclass
class ProcessHandle:
    process: subprocess.Popen[bytes]
    log_path: Path

    def poll(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return "" if code == 0 else f"exit code {code}; its output: {self.log_path}"

    def cancel(self) -> None:
        self.process.terminate()
        self.process.wait()


@dataclass
class SubmititHandle:
    job: Any  # submitit.Job

    def poll(self) -> str | None:
        if not self.job.done():
            return None
        state = self.job.state
        if state in ("COMPLETED", "FINISHED"):
            error = self.job.exception()
            return "" if error is None else f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"
        return f"job {self.job.job_id} ended {state}; its logs: {Path(self.job.paths.stdout).parent}"

    def cancel(self) -> None:
        self.job.cancel(check=False)


class Launcher(Protocol):
    concurrency: int | None  # stages at a time (None: all that are submitted)
    submits_ahead: bool  # submits children before their parents are done (Slurm's afterok)

    def start(self, stage: Stage, slot: Slot | None, parents: list[Handle]) -> Handle: ...


@dataclass
class SubprocessLauncher:
    """`--jobs N`: each stage in a child `python` process on its slot's devices."""

    index_path: Path
    num_processes: int
    strict: bool = False
    concurrency: int | None = 1
    submits_ahead: bool = False

    def start(self, stage: Stage, slot: Slot | None, parents: list[Handle]) -> Handle:
        assert slot is not None
        log_path = job_log_dir(self.index_path, stage).with_suffix(".txt")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "safeft.pipeline.scheduler",
            str(self.index_path),
            stage.id,
            f"--threads={slot.threads}",
            f"--num-processes={self.num_processes}",
            *(["--strict"] if self.strict else []),
        ]
        with open(log_path, "ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **slot.environment()}
            )
        return ProcessHandle(process, log_path)


@dataclass
class SubmititLauncher:
    """`--launcher local|slurm`: each stage a submitit job; its logs in `<runs>/logs/<stage id>/`."""

    cluster: str
    index_path: Path
    settings: LauncherSettings
    num_processes: int
    strict: bool = False
    concurrency: int | None = None
    submits_ahead: bool = False
    _jobs: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.submits_ahead = self.cluster == "slurm"

    def executor(self, stage: Stage, slot: Slot | None, parents: list[Handle]) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=job_log_dir(self.index_path, stage), cluster=self.cluster)
        s = self.settings
        params: dict[str, Any] = {"timeout_min": s.time_min, "name": f"safeft-{stage.kind}-{stage.path.name}"}
        if self.cluster == "slurm":
            extra = dict(s.slurm_extra)
            parent_ids = [h.job.job_id for h in parents if isinstance(h, SubmititHandle)]
            if parent_ids:
                extra["dependency"] = "afterok:" + ":".join(parent_ids)
                extra["kill_on_invalid_dep"] = "yes"  # a failed parent cancels its children
            params.update(
                slurm_partition=s.partition,
                slurm_additional_parameters=extra,
                mem_gb=s.mem_gb,
                cpus_per_task=s.cpus_per_stage,
                gpus_per_node=s.gpus_per_stage or None,
            )
        elif slot is not None and slot.gpus:
            params.update(gpus_per_node=len(slot.gpus), visible_gpus=tuple(int(g) for g in slot.gpus))
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def start(self, stage: Stage, slot: Slot | None, parents: list[Handle]) -> Handle:
        threads = slot.threads if slot else (self.settings.cpus_per_stage or 1)
        executor = self.executor(stage, slot, parents)
        job = executor.submit(
            StageJob(str(self.index_path), stage.id, threads, self.num_processes, self.strict, os.getcwd())
        )
        return SubmititHandle(job)


# ----- the scheduling loop ----------------------------------------------------------------------
def _measured_seconds(stage: Stage) -> float | None:
    metrics = stage.path / "metrics.json"
    if not metrics.is_file():
        return None
    value = read_json(metrics).get("wall_time_s")
    return float(value) if value is not None else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass
class GridRun:
    """The state of every stage of one `safeft run` and the progress view of it."""

    stages: list[Stage]
    launcher: Launcher
    slots: list[Slot | None]
    state: dict[str, str] = field(default_factory=dict)  # id -> waiting/running/done/cached/failed/skipped
    errors: dict[str, str] = field(default_factory=dict)
    durations: dict[str, list[float]] = field(default_factory=dict)  # kind -> measured seconds
    running: dict[str, tuple[Handle, Slot | None, float]] = field(default_factory=dict)
    handles: dict[str, Handle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for st in self.stages:
            self.state[st.id] = "cached" if st.cached else "waiting"
            seconds = _measured_seconds(st) if st.cached else None
            if seconds is not None:
                self.durations.setdefault(st.kind, []).append(seconds)
        self.by_id = {st.id: st for st in self.stages}

    def ready(self, st: Stage) -> bool:
        if self.launcher.submits_ahead:
            return all(self.state[d] in ("done", "cached", "running") for d in st.depends_on)
        return all(self.state[d] in ("done", "cached") for d in st.depends_on)

    def start_ready(self) -> bool:
        started = False
        for st in self.stages:
            if self.state[st.id] != "waiting" or not self.ready(st):
                continue
            if self.launcher.concurrency is not None and len(self.running) >= self.launcher.concurrency:
                break
            busy = [slot for _, slot, _ in self.running.values()]
            slot = next((s for s in self.slots if not any(s is b for b in busy)), None)
            parents = [self.handles[d] for d in st.depends_on if d in self.handles]
            handle = self.launcher.start(st, slot, parents)
            self.handles[st.id] = handle
            self.running[st.id] = (handle, slot, time.perf_counter())
            self.state[st.id] = "running"
            started = True
        return started

    def collect_finished(self) -> bool:
        changed = False
        for sid, (handle, _, t0) in list(self.running.items()):
            outcome = handle.poll()
            if outcome is None:
                continue
            del self.running[sid]
            changed = True
            if outcome == "":
                self.state[sid] = "done"
                self.durations.setdefault(self.by_id[sid].kind, []).append(time.perf_counter() - t0)
            else:
                self.state[sid] = "failed"
                self.errors[sid] = outcome
                log.error("stage %s failed: %s", sid, outcome)
                self.skip_descendants()
        return changed

    def skip_descendants(self) -> None:
        """Stages after a failed (or skipped) one cannot run: mark them, and cancel any already submitted."""
        for st in self.stages:  # parents come before children, so one pass reaches every descendant
            if self.state[st.id] in ("waiting", "running") and any(
                self.state[d] in ("failed", "skipped") for d in st.depends_on
            ):
                if st.id in self.running:
                    self.running.pop(st.id)[0].cancel()
                self.state[st.id] = "skipped"

    def eta(self) -> str:
        remaining = 0.0
        now = time.perf_counter()
        for st in self.stages:
            if self.state[st.id] not in ("waiting", "running"):
                continue
            measured = self.durations.get(st.kind)
            if not measured:
                return f"ETA after the first {st.kind} stage"
            estimate = statistics.median(measured)
            if st.id in self.running:
                estimate = max(estimate - (now - self.running[st.id][2]), 0.0)
            remaining += estimate
        width = self.launcher.concurrency or max(len(self.running), 1)
        return f"ETA {_minutes(remaining / width)}"

    def progress(self) -> str:
        counts = {name: sum(v == name for v in self.state.values()) for name in ("done", "cached", "failed")}
        now = time.perf_counter()
        running = ", ".join(f"{sid} ({_minutes(now - t0)})" for sid, (_, _, t0) in self.running.items())
        waiting = sum(v == "waiting" for v in self.state.values())
        return (
            f"grid: {counts['done']} done, {counts['cached']} cached, {counts['failed']} failed, "
            f"{waiting} waiting, {len(self.running)} running{': ' + running if running else ''} · {self.eta()}"
        )

    def loop(self) -> None:
        last_line = 0.0
        try:
            while True:
                changed = self.collect_finished()
                changed |= self.start_ready()
                if changed or time.perf_counter() - last_line > HEARTBEAT_SECONDS:
                    log.info("%s", self.progress())
                    last_line = time.perf_counter()
                if not self.running:
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if not self.launcher.submits_ahead:  # Slurm jobs are the cluster's: they go on
                for handle, _, _ in self.running.values():
                    handle.cancel()
            raise

    def summary(self, resume_command: str) -> str:
        counts = {
            name: sum(v == name for v in self.state.values())
            for name in ("done", "cached", "failed", "skipped")
        }
        lines = [f"grid: {len(self.stages)} stages: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
        for sid, error in self.errors.items():
            lines.append(f"  failed   {sid}: {error}")
        for sid, value in self.state.items():
            if value == "skipped":
                lines.append(f"  skipped  {sid} (after a failed stage)")
        if self.errors:
            lines.append(f"fix the cause, then resume (finished stages are reused): {resume_command}")
        return "\n".join(lines)


def resume_command() -> str:
    return (
        shlex.join(["safeft", *sys.argv[1:]])
        if sys.argv and "safeft" in sys.argv[0]
        else "the same 'safeft run' command"
    )


def run_grid(
    stages: list[Stage],
    index_path: Path,
    *,
    jobs: int = 1,
    launcher: str | None = None,
    settings: LauncherSettings | None = None,
    num_processes: int = 1,
    strict: bool = False,
) -> int:
    """Run the stages that are not cached, `jobs` at a time (or as Slurm allows); returns the exit code."""
    if jobs < 1:
        raise SafeftError(f"--jobs: got {jobs}, expected an integer >= 1")
    if launcher is not None and launcher not in LAUNCHERS:
        raise SafeftError(f"--launcher: got {launcher!r}, expected one of {', '.join(LAUNCHERS)}")
    settings = settings or LauncherSettings()
    slots: list[Slot | None]
    chosen: Launcher
    if launcher == "slurm":
        slots = [None]  # the cluster places each job
        chosen = SubmititLauncher("slurm", index_path, settings, num_processes, strict)
    else:
        slots = list(device_slots(jobs))
        if launcher == "local":
            chosen = SubmititLauncher("local", index_path, settings, num_processes, strict, concurrency=jobs)
        else:
            chosen = SubprocessLauncher(index_path, num_processes, strict, concurrency=jobs)
    grid = GridRun(stages, chosen, slots)
    start = time.perf_counter()
    grid.loop()
    summary = grid.summary(resume_command())
    log.info("%s (%s)", summary, _minutes(time.perf_counter() - start))
    if grid.errors:
        print(summary, file=sys.stderr)
        return STAGE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
