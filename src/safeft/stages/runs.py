"""Run directories: manifest, resolved config, log file, status, wall time and peak memory.

Layout of every stage's folder:

    config.yaml      the resolved config (YAML keys == config fields)
    manifest.json    stage, status (running/done), parent run, weights chain, git revision, versions
    metrics.json     the stage's numbers (written last, atomically)
    log.txt          the log of the stage
    adapter/ model/  weights (PEFT adapter or full safetensors)
    checkpoints/     Trainer checkpoints while running (removed when the stage is done)

A stage counts as finished only when its manifest says `status: done` and its config fingerprint
matches: everything else is rerun (resuming from the newest complete checkpoint).

The fingerprint covers exactly what can change a stage's result: every config field except those
declared with `fingerprint=False` (output, data and cache folders, logging, checkpointing, the
progress bar), and of the `methods` section only the chosen method's own settings. Manifests
written before this rule (no `fingerprint_version`) carry a hash of the whole config; such a run
still counts as finished when its saved config.yaml has today's fingerprint (`is_done_for`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from safeft.config import Config, read_yaml
from safeft.errors import SafeftError
from safeft.io import read_json, write_json

log = logging.getLogger("safeft")

PACKAGES = ("safeft", "torch", "transformers", "peft", "accelerate", "datasets")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


FINGERPRINT_VERSION = 2  # 1 (no version in the manifest): a hash of the whole config but `output`


def config_fingerprint(config: Config) -> str:
    """A hash of what determines a stage's result (`Config.fingerprint_data`)."""
    data = config.fingerprint_data()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def saved_config_fingerprint(
    path: Path, config_cls: type[Config], moved: dict[str, str] | None = None
) -> str | None:
    """Today's fingerprint of the config.yaml saved in run folder `path` (None if it no longer loads).

    `moved` maps run folders that were renamed to their new paths: a saved config that names its
    parent run by the old path fingerprints as if it named the new one.
    """
    try:
        data = read_yaml(path / "config.yaml")
        for key in ("from_run", "run"):  # the parent run of a finetune / evaluate config
            if isinstance(data.get(key), str) and moved and data[key] in moved:
                data[key] = moved[data[key]]
        return config_fingerprint(config_cls.from_dict(data, source=str(path / "config.yaml")))
    except (SafeftError, OSError):  # ConfigError is a SafeftError: a field was removed or renamed since
        return None


def is_main_process() -> bool:
    """Rank 0 of a launched group (or the only process): the one that writes run directories and logs."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunDir:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise SafeftError(
                f"{path} is not a safeft run directory (no manifest.json). Pass the --output folder of an earlier 'safeft align' or 'safeft finetune'."
            )
        return cls(path, read_json(path / "manifest.json"))

    def is_done(self, fingerprint: str | None = None) -> bool:
        if not self.manifest_path.is_file():
            return False
        m = read_json(self.manifest_path)
        return m.get("status") == "done" and (fingerprint is None or m.get("fingerprint") == fingerprint)

    def is_done_for(self, config: Config, moved: dict[str, str] | None = None) -> bool:
        """Finished with a config of the same fingerprint, under today's rule or (older runs) by its saved config."""
        if not self.is_done():
            return False
        fingerprint = config_fingerprint(config)
        if self.manifest_fingerprint() == fingerprint:
            return True
        legacy = read_json(self.manifest_path).get("fingerprint_version") is None
        return legacy and saved_config_fingerprint(self.path, type(config), moved) == fingerprint

    def manifest_fingerprint(self) -> str | None:
        return read_json(self.manifest_path).get("fingerprint") if self.manifest_path.is_file() else None

    def write_manifest(self, **updates: Any) -> None:
        self.manifest.update(updates)
        if is_main_process():
            write_json(self.manifest_path, self.manifest)

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint whose trainer_state.json exists (Trainer writes it last)."""
        ckpt_root = self.path / "checkpoints"
        if not ckpt_root.is_dir():
            return None
        complete = [p for p in ckpt_root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if not complete:
            return None
        return str(max(complete, key=lambda p: int(p.name.split("-")[-1])))


def start_run(path: str | Path, stage: str, config: Config, **manifest: Any) -> RunDir:
    """Create (or re-open for resumption) a stage's folder and record what is about to run."""
    run = RunDir(Path(path))
    run.path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        config.save(run.path / "config.yaml")
    run.write_manifest(
        stage=stage,
        status="running",
        fingerprint=config_fingerprint(config),
        fingerprint_version=FINGERPRINT_VERSION,
        git_revision=git_revision(),
        versions=package_versions(),
        command=" ".join(sys.argv),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **manifest,
    )
    return run


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Send safeft's and transformers' log records to the run's log.txt as well (rank 0 only)."""
    if not is_main_process():
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("safeft"), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def stage_run(path: str | Path, stage: str, config: Config, **manifest: Any) -> Iterator[RunDir]:
    """`start_run` and the run's log file for the block; bad input leaves no half-made folder behind.

    When the block fails with a `SafeftError` (a missing file, a bad row, an unknown model) in a
    folder this call created and no checkpoint was written yet, the folder is removed: the user
    fixes the input and reruns, and no run directory without results is ever left to mislead.
    Anything else (a crash, Ctrl-C, a kill) keeps the folder so that a rerun resumes it.
    """
    created = not Path(path).exists()
    run = start_run(path, stage, config, **manifest)
    try:
        with log_to_file(run.path / "log.txt"):
            yield run
    except SafeftError:
        if created and is_main_process() and run.latest_checkpoint() is None:
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Peak memory of a block: CUDA allocated bytes on GPU, sampled process RSS on CPU.

    RSS keeps freed buffers with glibc's default allocator, so it overstates multi-pass methods;
    `safeft bench` measures live tensor bytes for the published comparison.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = torch.cuda.memory_allocated()
        else:
            self.baseline_bytes = _rss_bytes()
            self.peak_bytes = self.baseline_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if torch.cuda.is_available() else "process_rss"

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_memory_mb": round(self.peak_bytes / 2**20, 1),
            "baseline_memory_mb": round(self.baseline_bytes / 2**20, 1),
            "memory_measure": self.kind,
        }
