"""A runs folder shared by several `safeft run` processes: each stage runs exactly once (real processes)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from _stage_support import ONE_ATTACK, env, experiment_dict
from safeft.stages import runs
from safeft.stages.runs import lock_path

# Holds a run folder's lock with a 2-second lease, then sleeps (its heartbeat renews the lease).
HOLD_LOCK = """
import sys, time
from safeft.stages import runs
runs.LEASE_SECONDS = 2.0
with runs.run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_holder_that_stops_renewing_its_lease_is_stale_after_the_lease(tmp_path, monkeypatch):
    """The rule for a holder on another node that died: its lease runs out. Simulated on this host
    by freezing the holder (SIGSTOP): its process exists, but it renews nothing."""
    monkeypatch.setattr(runs, "LEASE_SECONDS", 2.0)  # every peer must agree on the lease
    run_dir = tmp_path / "runs" / "align" / "sft-s1-abcd"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, env=env(), text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(runs.RunInUse, match=f"pid {holder.pid} on "):
            with runs.run_lock(run_dir):
                pass
        time.sleep(3 * 2.0)  # a live holder keeps its lease: still in use after several leases
        with pytest.raises(runs.RunInUse):
            with runs.run_lock(run_dir):
                pass
        holder.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        runs.wait_for_run_lock(run_dir, poll_seconds=0.2)
        waited = time.monotonic() - start
        assert 1.0 <= waited < 30, waited
        with runs.run_lock(run_dir):  # taken over
            pass
    finally:
        holder.kill()
        holder.wait()


def test_two_processes_on_one_runs_folder_run_every_stage_exactly_once(tmp_path):
    exp = experiment_dict(tmp_path, **ONE_ATTACK, include_unattacked=False)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    command = [sys.executable, "-m", "safeft.cli", "run", str(path)]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    runs = tmp_path / "runs"
    stage_dirs = sorted(p.parent for p in runs.glob("*/*/manifest.json"))
    assert len(stage_dirs) == 3  # align, the attack, its evaluation
    for stage_dir in stage_dirs:
        # A line each run of the stage logs once: the first training step, or the harmful-prompt score.
        first_line = "harmful prompts: HS" if stage_dir.parent.name == "evaluate" else "step 1:"
        assert (stage_dir / "log.txt").read_text().count(first_line) == 1, stage_dir
        assert not lock_path(stage_dir).exists()
    # Between them the two processes ran the 3 stages once; the rest of each one's plan was found done.
    assert sum(len(re.findall(r"stage \d/3: \S+ done in", out)) for out in outputs) == 3
    found_done = sum(out.count("done by another process") + out.count("(cached, skipped)") for out in outputs)
    assert found_done == 3
