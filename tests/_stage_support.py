"""Run safeft stages as real subprocesses on the tiny model: what reproducibility, resume and lock tests share."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

# What a run measures about the machine rather than computes: left out when two runs are compared.
MACHINE_KEYS = {
    "train_wall_time_s",
    "seconds_per_step_median",
    "wall_time_s",
    "peak_memory_mb",
    "baseline_memory_mb",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "resumed_from",
    "versions",
    "timing",
}


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "safeft.cli", *argv]


def safeft(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`safeft ARGV` in a fresh Python process."""
    return subprocess.run(command(*argv), env=env(), capture_output=True, text=True, timeout=timeout)


def align_argv(data: dict[str, str], out: Path, method: str, *extra: str) -> list[str]:
    """A few steps of `safeft align` on the tiny model and the demo data (harmful pool for the methods that use one)."""
    return [
        "align",
        "--method",
        method,
        "--model",
        "tiny-random-llama",
        "--alignment-data",
        data["refusals"],
        "--alignment-samples",
        "24",
        "--harmful-data",
        data["harmful_pool"],
        "--harmful-samples",
        "8",
        "--max-length",
        "32",
        "--train.batch-size",
        "4",
        "--train.learning-rate",
        "1e-2",
        "--train.progress",
        "false",
        "--output",
        str(out),
        *extra,
    ]


def file_hashes(run: Path, names: tuple[str, ...] = ("adapter", "model")) -> dict[str, str]:
    """sha256 of every weights file of a run directory, by path relative to it."""
    out = {}
    for name in names:
        for f in sorted((run / name).rglob("*")) if (run / name).is_dir() else []:
            if f.is_file():
                out[str(f.relative_to(run))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def computed(value):
    """A metrics.json with the machine's measurements (times, memory, versions) left out."""
    if isinstance(value, dict):
        return {k: computed(v) for k, v in value.items() if k not in MACHINE_KEYS}
    if isinstance(value, list):
        return [computed(v) for v in value]
    return value


def metrics(run: Path) -> dict:
    return computed(json.loads((run / "metrics.json").read_text()))
