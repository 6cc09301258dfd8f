"""Post-fine-tuning repair methods: one explicit name -> (config, repair function) map.

A repair method edits the fine-tuning run's LoRA adapter in place (`repair(model, config, inputs)`
returns its metrics); `safeft repair` (`safeft.stages.repair`) loads the run, calls it and writes a
run directory. To add one: a module here with its `Config` and its `repair` function, one entry in
`REPAIRS`, tests in tests/test_repair_<name>.py, and a section in docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safeft.config import Config
from safeft.errors import unknown_name
from safeft.repair import antidote, safelora

NO_REPAIR = "none"  # the grid value that evaluates the fine-tuned model as it is


@dataclass(frozen=True)
class RepairSpec:
    """What the repair stage needs to know about a method."""

    config_cls: type[Config]
    repair: Callable[..., dict[str, Any]]
    needs_alignment: (
        bool  # needs the alignment's weight change (the fine-tuning must start from an alignment run)
    )
    description: str = ""


REPAIRS: dict[str, RepairSpec] = {
    "safelora": RepairSpec(
        safelora.SafeLoRAConfig,
        safelora.repair,
        True,
        "project the least aligned LoRA layers onto the alignment subspace",
    ),
    "antidote": RepairSpec(
        antidote.AntidoteConfig,
        antidote.repair,
        False,
        "zero the LoRA weights with the highest Wanda score on harmful rows",
    ),
}


def get_repair(name: str) -> RepairSpec:
    """The spec of a repair method by name; unknown names get 'did you mean' suggestions."""
    if name not in REPAIRS:
        raise unknown_name("repair method", name, REPAIRS)
    return REPAIRS[name]


__all__ = ["NO_REPAIR", "REPAIRS", "RepairSpec", "get_repair"]
