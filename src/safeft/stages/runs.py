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
written before this rule (no `fingerprint_version`) carry a hash of more of the config; such a run
still counts as the same config when its saved config.yaml has today's fingerprint (`has_fingerprint_of`).

What safeft writes into (`stage_run`): a folder it creates, an empty folder, or a run folder of the
same stage (its manifest marks it as safeft's own) that is unfinished and was started with the same
config. Anything else is refused with a message before a byte is written: a folder of the user's, a
run of another stage, a finished run of another config, a checkpoint of another config. With
`overwrite` a run folder is replaced, and only once the new run is complete: it is built beside the
old one, which stays untouched if the new one fails. Two processes never work in one run folder at
once: the folder's lock (`run_lock`) is held for the whole stage.
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
from filelock import SoftFileLease, Timeout

from safeft.config import Config, read_yaml
from safeft.errors import SafeftError
from safeft.io import read_json, write_json

log = logging.getLogger("safeft")

# Generation engines that give transformers' exact greedy answers (tests/test_generate.py).
EXACT_ENGINES = ("prefix", "loop", "hf")

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


FINGERPRINT_VERSION = 2  # none in the manifest: a hash of the whole config (but `output`)


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
    except (SafeftError, OSError):  # incl. ConfigError: a field was removed or renamed since
        return None


def is_main_process() -> bool:
    """Rank 0 of a launched group (or the only process): the one that writes run directories and logs."""
    return int(os.environ.get("RANK", "0")) == 0


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every key whose value differs (nested sections as 'train.learning_rate')."""
    out = []
    for key in sorted(set(old) | set(new)):
        if f"{prefix}{key}" in NOT_RESULT_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# Config keys that do not change what a run computes: a run may be resumed under other values of them.
NOT_RESULT_KEYS = {"output", "train.progress"}


@dataclass
class RunDir:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    # Where the run will live once complete: `path` itself, or the folder it replaces (overwrite).
    final_path: Path | None = None
    reused: bool = False  # a finished run of the same config: nothing to do

    def final(self, name: str = "") -> Path:
        """The absolute path of `name` inside the run once it is in place (weights paths in manifests)."""
        return ((self.final_path or self.path) / name).resolve()

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @classmethod
    def open(cls, path: str | Path, stages: tuple[str, ...] | None = None) -> RunDir:
        """An existing run directory; with `stages`, one of those stages (e.g. a run that has weights)."""
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise SafeftError(
                f"{path} is not a safeft run directory (no manifest.json). Pass the --output folder of an earlier 'safeft align' or 'safeft finetune'."
            )
        run = cls(path, read_json(path / "manifest.json"))
        if stages and run.manifest.get("stage") not in stages:
            raise SafeftError(
                f"{path} is a {run.manifest.get('stage')} run, which has no model of its own; expected the "
                f"folder of a {' or '.join(repr(s) for s in stages)} run (its weights are what is loaded)."
            )
        return run

    def is_done(self, fingerprint: str | None = None) -> bool:
        if not self.manifest_path.is_file():
            return False
        m = read_json(self.manifest_path)
        return m.get("status") == "done" and (fingerprint is None or m.get("fingerprint") == fingerprint)

    def has_fingerprint_of(self, config: Config, moved: dict[str, str] | None = None) -> bool:
        """Started with a config of the same fingerprint: under today's rule, or (a manifest older
        than it) judged by the config.yaml it saved."""
        if not self.manifest_path.is_file():
            return False
        manifest = read_json(self.manifest_path)
        fingerprint = config_fingerprint(config)
        if manifest.get("fingerprint") == fingerprint:
            return True
        legacy = manifest.get("fingerprint_version") is None
        return legacy and saved_config_fingerprint(self.path, type(config), moved) == fingerprint

    def is_done_for(self, config: Config, moved: dict[str, str] | None = None) -> bool:
        """Finished with a config of the same fingerprint (`has_fingerprint_of`)."""
        return self.is_done() and self.has_fingerprint_of(config, moved)

    def mark_reused(self) -> RunDir:
        self.reused = True
        return self

    def write_manifest(self, **updates: Any) -> None:
        self.manifest.update(updates)
        if is_main_process():
            write_json(self.manifest_path, self.manifest)

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint: one whose trainer_state.json (Trainer writes it last) parses.

        Trainer writes that file in place, so a kill during the write leaves it empty or cut short;
        such a checkpoint is passed over for the one before it (Trainer keeps two).
        """
        ckpt_root = self.path / "checkpoints"
        if not ckpt_root.is_dir():
            return None
        complete = [p for p in ckpt_root.glob("checkpoint-*") if _complete_json(p / "trainer_state.json")]
        if not complete:
            return None
        return str(max(complete, key=lambda p: int(p.name.split("-")[-1])))


def _complete_json(path: Path) -> bool:
    try:
        read_json(path)
    except (OSError, ValueError):
        return False
    return True


def start_run(path: str | Path, stage: str, config: Config, **manifest: Any) -> RunDir:
    """Create (or re-open for resumption) a stage's folder and record what is about to run.

    The manifest is written first: it is the mark that makes the folder safeft's own.
    """
    run = RunDir(Path(path))
    run.path.mkdir(parents=True, exist_ok=True)
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
    if is_main_process():
        config.save(run.path / "config.yaml")
    return run


# ----- what a stage may write into -----------------------------------------------------------------


def lock_path(path: Path) -> Path:
    """The lock of a run folder: a file beside it, so it can be taken before the folder exists."""
    return path.parent / f".{path.name}.lock"


# The stale-lock rule for holders on other hosts (Slurm jobs of one grid on several nodes): the
# holder renews its lease every LEASE_SECONDS / 3; a lease not renewed for LEASE_SECONDS (its node
# died or hangs) is taken over. A holder on this host whose process is gone is stale at once.
LEASE_SECONDS = 120.0


class RunInUse(SafeftError):
    """Another process holds the run folder's lock."""


def _lease(path: Path) -> SoftFileLease:
    return SoftFileLease(str(lock_path(path)), lease_duration=LEASE_SECONDS, timeout=0)


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block, or fail at once if another process holds it.

    A `filelock.SoftFileLease`: the lock file is created exclusively (which works on shared file
    systems too) and records the holder's pid and host. A lock left by a process that has died on
    this host is stale and taken over at once; one held from another host is taken over once its
    holder has not renewed it for `LEASE_SECONDS`.
    """
    path = Path(path)
    lock = _lease(path)
    try:
        lock.acquire()
    except Timeout:
        holder = _lock_holder(lock_path(path))
        raise RunInUse(
            f"{path} is in use by another safeft process ({holder}): two commands must not run the same "
            f"stage at once. Wait for it to finish, then rerun to reuse its result. If that process no longer "
            f"exists (it ran on another machine), delete {lock_path(path)}."
        ) from None
    try:
        yield
    finally:
        lock.release()


def wait_for_run_lock(path: str | Path, poll_seconds: float = 2.0) -> None:
    """Return once no other process holds the run folder's lock (stale locks count as free)."""
    path = Path(path)
    logged = False
    lock = _lease(path)  # one instance: a lease expires once it has been seen unrenewed for its duration
    while True:
        try:
            lock.acquire()
        except Timeout:
            if not logged:
                log.info(
                    "%s: in use by another process (%s); waiting for it", path, _lock_holder(lock_path(path))
                )
                logged = True
            time.sleep(poll_seconds)
            continue
        lock.release()
        return


def _lock_holder(lock_file: Path) -> str:
    try:
        fields = dict(line.split("=", 1) for line in lock_file.read_text().splitlines() if "=" in line)
        return f"pid {int(fields['pid'])} on {fields['host']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def _check_writable_location(path: Path) -> None:
    """An output path safeft can make a folder at: not a file, not a dangling link, in a writable place."""
    if path.is_symlink() and not path.exists():
        raise SafeftError(
            f"output {path} is a symbolic link to {os.readlink(path)}, which does not exist. Create the "
            "target folder, or pass another --output."
        )
    if path.exists() and not path.is_dir():
        raise SafeftError(f"output {path} is an existing file, not a folder. Pass a folder path as --output.")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise SafeftError(f"output {path}: {parent} is a file, so no folder can be made under it.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SafeftError(
            f"output {path}: no permission to write in {parent}. Pass an --output in a folder you can write to."
        )


def _claim(path: Path, stage: str, config: Config, overwrite: bool) -> str:
    """What to do with the output folder: 'new', 'reuse', 'resume' or 'replace'; SafeftError when refused."""
    if not path.exists() or not any(path.iterdir()):
        return "new"
    manifest_file = path / "manifest.json"
    try:
        manifest = read_json(manifest_file) if manifest_file.is_file() else {}
    except (OSError, ValueError) as e:
        raise SafeftError(
            f"output {path}: its manifest.json cannot be read ({e}); pass another --output, or repair or remove the folder."
        ) from None
    if not isinstance(manifest, dict) or "stage" not in manifest:
        raise SafeftError(
            f"output {path} is a folder that is not empty and was not made by safeft (no run manifest). "
            "safeft writes only into empty folders and its own runs, and never deletes what it did not "
            "make: pass another --output."
        )
    what = f"{manifest['stage']} run" + (" (finished)" if manifest.get("status") == "done" else "")
    if overwrite:
        return "replace"
    if manifest["stage"] != stage:
        raise SafeftError(
            f"output {path} holds a safeft {what}, not a {stage} run. Pass another --output, or --overwrite to replace it."
        )
    same = RunDir(path).has_fingerprint_of(config)
    if manifest.get("status") == "done":
        if same:
            return "reuse"
        raise SafeftError(
            f"output {path} holds a finished {stage} run of another configuration ({_differences(path, config)}). "
            "safeft does not write over a finished run: pass another --output, or --overwrite to replace it."
        )
    if not same and RunDir(path).latest_checkpoint():
        raise SafeftError(
            f"output {path} holds an interrupted {stage} run with a checkpoint written under another "
            f"configuration ({_differences(path, config)}); resuming it would continue that run, not this "
            "one. Rerun with that configuration to finish it, pass another --output, or --overwrite."
        )
    return "resume"


def _differences(path: Path, config: Config) -> str:
    try:
        diff = config_differences(read_yaml(path / "config.yaml"), config.to_dict())
    except SafeftError:
        return "its config.yaml is missing"
    return "differing keys: " + "; ".join(diff) if diff else "a different safeft version"


def _replace_folder(old: Path, new: Path) -> None:
    """Put the complete run `new` in the place of `old`: the old run is removed only after the move."""
    aside = old.parent / f".{old.name}.replaced"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(old, aside)
    os.replace(new, old)
    shutil.rmtree(aside, ignore_errors=True)


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
def stage_run(
    path: str | Path, stage: str, config: Config, *, overwrite: bool = False, **manifest: Any
) -> Iterator[RunDir]:
    """Claim the output folder (locked for the block), start or resume the run, and log to its log.txt.

    Yields a `RunDir` with `reused` set when the folder already holds this run, finished: the
    caller returns it as is. Refused folders raise `SafeftError` before anything is written (see the
    module docstring). When the block fails with a `SafeftError` (a missing file, a bad row, an
    unknown model) before any checkpoint was written, a folder this call created is removed: the user
    fixes the input and reruns, and no run directory without results is ever left to mislead.
    Anything else (a crash, Ctrl-C, a kill) keeps the folder so that a rerun resumes it. With
    `overwrite`, a run already there is replaced only once the new one is complete.
    """
    final = Path(path)
    if not is_main_process():  # rank 0 has claimed the folder; the others work where it works
        work = final.parent / f".{final.name}.new" if overwrite and final.exists() else final
        yield RunDir(work, final_path=final)
        return
    _check_writable_location(final)
    missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(final):
            action = _claim(final, stage, config, overwrite)
            if action == "reuse":
                yield RunDir.open(final).mark_reused()
                return
            work = final.parent / f".{final.name}.new" if action == "replace" else final
            if action == "replace" and work.exists() and _claim_or_none(work, stage, config) != "resume":
                shutil.rmtree(work)  # an earlier replacement under another config: ours, of no use now
            existed = work.exists()
            fresh = not existed or not any(work.iterdir())
            run = start_run(work, stage, config, **manifest)
            run.final_path = final
            try:
                with log_to_file(run.path / "log.txt"):
                    yield run
            except SafeftError:
                if fresh and run.latest_checkpoint() is None:
                    _remove_made(run.path, keep_folder=existed)
                raise
            if work != final and run.is_done():
                _replace_folder(final, work)
                run.path, run.manifest = final, read_json(final / "manifest.json")
    finally:
        for folder in missing:  # parents this call made, if they stayed empty (rmdir refuses otherwise)
            with contextlib.suppress(OSError):
                folder.rmdir()


def _remove_made(path: Path, keep_folder: bool) -> None:
    """Remove what a failed start wrote: the folder, or only its contents if it was there (empty) before."""
    if not keep_folder:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _claim_or_none(path: Path, stage: str, config: Config) -> str | None:
    try:
        return _claim(path, stage, config, overwrite=False)
    except SafeftError:
        return None


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
