"""Run a stage on several processes: `safeft align ... --num-processes N`.

`launch` re-executes the same `safeft` command under PyTorch's launcher,

    python -m torch.distributed.run --standalone --nproc_per_node N -m safeft.cli -- <stage> ...

(the module behind the `torchrun` script), which starts N local processes with `RANK`,
`LOCAL_RANK` and `WORLD_SIZE` set. Inside them, the Trainer's Accelerator (or `PartialState` in
the evaluation stage) joins the process group: NCCL on GPUs, gloo on CPU. Every stage then runs
as data-parallel (DDP): each process holds a full copy of the model and sees its own slice of
every global batch; gradients are averaged by an all-reduce in every backward.

This covers one machine and plain DDP. For FSDP, DeepSpeed or several machines, use Accelerate's
launcher with a config file instead (see docs/distributed.md and configs/accelerate/):

    accelerate launch --config_file configs/accelerate/fsdp.yaml -m safeft.cli align ...

Both launchers set the same environment variables, so the stages do not care which one started them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from safeft.errors import SafeftError

log = logging.getLogger("safeft")


def inside_launched_process() -> bool:
    """True in a process started by torchrun / accelerate launch (they set WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def strip_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (so the launched processes do not launch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = True
            continue
        if arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def launch_command(argv: list[str], num_processes: int) -> list[str]:
    """The torchrun command line that runs `safeft <argv>` on `num_processes` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one machine: a private rendezvous on a free local port
        "--nproc_per_node",
        str(num_processes),
        "-m",
        "safeft.cli",
        "--",  # everything after is safeft's: torchrun would otherwise take `--run` for its `--run-path`
        *strip_option(argv, "--num-processes"),
    ]


def launch(argv: list[str], num_processes: int) -> int:
    """Run `safeft <argv>` (e.g. `["align", "--config", "x.yaml"]`) on `num_processes` processes; return the exit code."""
    if num_processes < 1:
        raise SafeftError(f"--num-processes: got {num_processes}, expected an integer >= 1")
    if inside_launched_process():
        raise SafeftError(
            f"--num-processes {num_processes} was given inside an already launched process (WORLD_SIZE={os.environ.get('WORLD_SIZE')}); "
            "either launch with torchrun / accelerate launch, or pass --num-processes, not both"
        )
    cmd = launch_command(argv, num_processes)
    env = dict(os.environ)
    # torchrun would otherwise pin each process to 1 thread with a warning; on CPU share the cores out.
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    return subprocess.run(cmd, env=env).returncode
