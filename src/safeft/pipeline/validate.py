"""`safeft validate FILE...`: check experiment and single-stage config files, reporting every problem.

The kind of a file is inferred when not given: a file with a `grid` is an experiment; otherwise it
is whichever stage config it validates as (the folder name — `configs/align/...` — breaks ties).
Accelerate launcher configs (`configs/accelerate/`) are recognised and passed over.
An experiment is valid only when every stage it expands to is.

Single-stage files usually leave out what names one particular run (`output`, and the run or
model a finetune/evaluate stage starts from): those are given on the command line, so
placeholders stand in for them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeft.config import read_yaml
from safeft.errors import ConfigError, SafeftError

STAGE_KINDS = ("align", "finetune", "repair", "evaluate")
ACCELERATE_KEYS = {"compute_environment", "distributed_type"}  # configs/accelerate/*.yaml
# Keys a shipped single-stage file may leave to the command line -> placeholder used for validation.
COMMAND_LINE_KEYS = {
    "align": {"output": "<output>"},
    "finetune": {"output": "<output>", "from_run": "<alignment run>"},
    "repair": {"output": "<output>", "run": "<fine-tuning run>"},
    "evaluate": {"output": "<output>", "run": "<run>"},
}


def _stage_class(kind: str) -> Any:
    if kind == "align":
        from safeft.stages.align import AlignConfig

        return AlignConfig
    if kind == "finetune":
        from safeft.stages.finetune import FinetuneConfig

        return FinetuneConfig
    if kind == "repair":
        from safeft.stages.repair import RepairConfig

        return RepairConfig
    from safeft.stages.evaluate import EvaluateConfig

    return EvaluateConfig


def _with_placeholders(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in COMMAND_LINE_KEYS[kind].items():
        if key in ("from_run", "run") and out.get("model"):
            continue  # the file names a bare model instead of a run
        out.setdefault(key, value)
    return out


def validate_stage(data: dict[str, Any], kind: str, source: str) -> None:
    _stage_class(kind).from_dict(_with_placeholders(kind, data), source=f"{source} ({kind} config)")


def validate_experiment(data: dict[str, Any], source: str) -> int:
    """Validate an experiment and every stage it expands to; returns the number of stages."""
    from safeft.pipeline.experiment import ExperimentConfig, expand

    return len(expand(ExperimentConfig.from_dict(data, source=source)))


def validate_file(path: str | Path, kind: str | None = None) -> str:
    """Validate one file; return its kind ('experiment', 'align', 'finetune' or 'evaluate').

    Raises ConfigError with every problem found (for an inferred stage kind: the problems of the
    kind it came closest to).
    """
    path = Path(path)
    try:
        data = read_yaml(path)
    except SafeftError as e:  # missing file or not YAML: one more failed file, not the end of the command
        raise ConfigError([str(e)], str(path)) from None
    if kind is None and "grid" in data:
        kind = "experiment"
    if kind is None and ACCELERATE_KEYS & set(data):
        return "accelerate"  # a launcher config for `accelerate launch`, not a safeft config: nothing to check here
    if kind == "experiment":
        validate_experiment(data, str(path))
        return kind
    if kind is not None:
        validate_stage(data, kind, str(path))
        return kind
    # Infer: the folder name first, then every stage kind; keep the error with the fewest problems.
    order = sorted(STAGE_KINDS, key=lambda k: k not in path.parts)
    errors: list[ConfigError] = []
    for candidate in order:
        try:
            validate_stage(data, candidate, str(path))
            return candidate
        except ConfigError as e:
            errors.append(e)
    # Closest: fewest top-level keys the kind does not know (the file's shape; a typo inside a known
    # section does not make it another kind), then fewest problems.
    raise min(errors, key=lambda e: (sum(_unknown_top_level(p) for p in e.problems), len(e.problems)))


def _unknown_top_level(problem: str) -> bool:
    prefix = "unknown key '"
    return problem.startswith(prefix) and "." not in problem[len(prefix) :].split("'", 1)[0]
