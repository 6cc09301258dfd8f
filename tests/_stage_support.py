"""Run safeft stages as real subprocesses on the tiny model: what reproducibility, resume and lock tests share."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from safeft.config import deep_merge
from safeft.pipeline.demo_data import write_demo_data

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


def finetune_argv(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    """`safeft finetune` of the bare tiny model on the demo data's poisoned sst2 mix (`extra`: more flags)."""
    return [
        "finetune",
        "--model",
        "tiny-random-llama",
        "--task-data",
        data["sst2_train"],
        "--harmful-data",
        data["attack"],
        "--eval-prompts",
        data["eval_prompts"],
        *extra,
        "--output",
        str(out),
    ]


def tiny_experiment(
    data: dict[str, str], output: Path, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An experiment file's content on the tiny model and the demo data: SFT and Booster aligned, attacked at
    two poison ratios, evaluated with the keyword judge, two seeds, a few steps each; `changes` is merged
    into it key by key (a nested mapping changes only the keys it names)."""
    train = {"max_steps": 3, "batch_size": 4, "save_steps": 2, "progress": False}
    experiment = {
        "name": output.name,
        "output": str(output),
        "base": {
            "align": {
                "model": "tiny-random-llama",
                "alignment_data": data["refusals"],
                "alignment_samples": 16,
                "harmful_data": data["harmful_pool"],
                "harmful_samples": 8,
                "max_length": 48,
                "train": train,
                "methods": {"booster": {"harmful_batch_size": 4}},
            },
            "finetune": {
                "task_data": data["sst2_train"],
                "harmful_data": data["attack"],
                "eval_prompts": data["eval_prompts"],
                "samples": 16,
                "max_length": 48,
                "train": {**train, "learning_rate": 1e-3},
            },
            "evaluate": {
                "judge": "keyword",
                "harmful_prompts": data["eval_prompts"],
                "task_data": data["sst2_eval"],
                "limit": 4,
                "task_limit": 4,
                "max_new_tokens": 4,
                "task_max_new_tokens": 2,
                "batch_size": 4,
            },
        },
        "grid": {
            "methods": ["sft", "booster"],
            "poison_ratios": [0.05, 0.1],
            "tasks": ["sst2"],
            "seeds": [1, 2],
        },
    }
    return deep_merge(experiment, changes or {})


# The smallest grid: SFT aligned once, attacked once (with its unattacked evaluation unless switched off).
ONE_ATTACK = {"methods": ["sft"], "seeds": [1], "poison_ratios": [0.1], "include_no_defense": False}


def experiment_dict(tmp_path: Path, **grid: Any) -> dict[str, Any]:
    """`tiny_experiment` named "tiny" with its demo files written under `tmp_path` and runs in `tmp_path/runs`;
    `grid` changes the grid's keys."""
    data = write_demo_data(
        tmp_path / "data", n_refusals=24, n_pool=16, n_attack=24, n_eval=8, n_task=32, n_task_eval=8
    )
    return tiny_experiment(data, tmp_path / "runs", {"name": "tiny", "grid": grid})


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
