"""The runs folder as the report sees it: each stage's run directory, its grid labels and its metrics.

`experiment.json` (written by `safeft run`) names each stage and its place in the grid; without it
(run directories made by hand with `safeft align/finetune/evaluate`) the labels are recovered from
each run's manifest and config, following `parent` links.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.config import read_yaml
from safeft.errors import SafeftError
from safeft.evaluation.result import EvaluationResult
from safeft.io import read_json

NO_DEFENSE = "no defense"
INDEX_FILE = "experiment.json"


@dataclass
class Run:
    """One stage's run directory with its grid labels and, when it is done, its metrics."""

    id: str
    kind: str
    labels: dict[str, Any]
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.metrics is not None


def collect_runs(runs_dir: str | Path) -> list[Run]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SafeftError(
            f"runs folder {runs_dir} does not exist. Pass the output folder of 'safeft run' (e.g. runs/<experiment name>)."
        )
    index_path = runs_dir / INDEX_FILE
    runs = (
        _runs_from_index(runs_dir, read_json(index_path))
        if index_path.is_file()
        else _runs_from_manifests(runs_dir)
    )
    if not runs:
        raise SafeftError(
            f"runs folder {runs_dir} holds no run directories (no experiment.json and no */manifest.json)."
        )
    return runs


def fixed_protocol(runs_dir: str | Path) -> dict[str, Any] | None:
    """The experiment's fixed attack protocol: its first poison ratio and the first value of every
    swept attack axis (an experiment file lists the protocol's value first on each axis).

    The attack labels of its stages have the same shape, so `attack_key` compares them. None without
    experiment.json (run folders made by hand) or without poison ratios.
    """
    index_path = Path(runs_dir) / INDEX_FILE
    if not index_path.is_file():
        return None
    grid = (read_json(index_path).get("experiment") or {}).get("grid") or {}
    ratios = grid.get("poison_ratios") or []
    if not ratios:
        return None
    axes = grid.get("attack") or {}
    return {"poison_ratio": ratios[0], "attack": {axis: values[0] for axis, values in axes.items() if values}}


def metric(metrics: dict[str, Any], name: str) -> float | None:
    """A number of an evaluation's metrics.json by its `EvaluationResult` name (None when absent)."""
    return EvaluationResult.from_metrics(metrics).get(name)


def attack_key(attack: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The attack settings of a grid point, hashable and in a fixed order."""
    return tuple(sorted((attack or {}).items()))


def attack_title(key: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) if key else ""


def method_order(runs: list[Run]) -> list[str]:
    """The methods of `runs` in grid order, the undefended reference first."""
    order: list[str] = []
    for r in runs:
        m = r.labels.get("method")
        if m is not None and m not in order:
            order.append(m)
    return sorted(order, key=lambda m: m != NO_DEFENSE)


def _load_metrics(path: Path) -> dict[str, Any] | None:
    try:
        manifest = read_json(path / "manifest.json")
        if manifest.get("status") != "done":
            return None
        return read_json(path / "metrics.json")
    except (OSError, ValueError):
        return None


def _runs_from_index(runs_dir: Path, index: dict[str, Any]) -> list[Run]:
    return [Run(s["id"], s["kind"], s["labels"], _load_metrics(runs_dir / s["id"])) for s in index["stages"]]


def _config_or_empty(path: Path) -> dict[str, Any]:
    """A run's saved config.yaml; {} when it is missing or unreadable (its labels fall back to defaults)."""
    try:
        return read_yaml(path)
    except (SafeftError, OSError):
        return {}


def _runs_from_manifests(runs_dir: Path) -> list[Run]:
    """Without experiment.json: labels from each run's manifest and config, following `parent` links."""
    info: dict[
        str, tuple[str, dict[str, Any], dict[str, Any], Path]
    ] = {}  # resolved path -> (kind, manifest, config, path)
    for manifest_path in sorted(runs_dir.glob("**/manifest.json")):
        run_path = manifest_path.parent
        if run_path.is_symlink():  # the old name of a folder adopted under today's fingerprint
            continue
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError):
            continue
        info[str(run_path.resolve())] = (
            manifest.get("stage", ""),
            manifest,
            _config_or_empty(run_path / "config.yaml"),
            run_path,
        )

    def labels_of(key: str) -> dict[str, Any]:
        kind, manifest, config, _ = info[key]
        seed = (config.get("train") or {}).get("seed")
        if kind == "align":
            return {"method": manifest.get("method", config.get("method", "?")), "seed": seed}
        if kind == "finetune":
            method = manifest.get("alignment_method") or NO_DEFENSE if config.get("from_run") else NO_DEFENSE
            return {
                "method": method,
                "seed": seed,
                "task": config.get("task"),
                "poison_ratio": config.get("poison_ratio"),
                "attack": {},
                "attacked": True,
            }
        parent = manifest.get("parent")
        if kind == "repair" and parent and str(Path(parent).resolve()) in info:
            up = labels_of(str(Path(parent).resolve()))
            return {
                **up,
                "method": f"{up['method']} + {manifest.get('method')}",
                "repair": manifest.get("method"),
            }
        if parent and str(Path(parent).resolve()) in info:
            up = labels_of(str(Path(parent).resolve()))
            attacked = info[str(Path(parent).resolve())][0] in ("finetune", "repair")
            return {
                **up,
                "task": config.get("task") or up.get("task"),
                "poison_ratio": up.get("poison_ratio"),
                "attack": up.get("attack", {}),
                "attacked": attacked,
            }
        return {
            "method": NO_DEFENSE,
            "seed": None,
            "task": config.get("task"),
            "poison_ratio": None,
            "attack": {},
            "attacked": False,
        }

    runs = []
    for key, (kind, _, _, path) in info.items():
        if kind in ("align", "finetune", "repair", "evaluate"):
            runs.append(Run(str(path.relative_to(runs_dir)), kind, labels_of(key), _load_metrics(path)))
    return runs
