"""The one record type every source produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """An instruction-following example.

    `output` is the target response for training rows and the reference answer for evaluation rows
    (empty for prompt-only sets). `meta` carries provenance and labels: `source`, `path`, `row`
    (1-based line in the file), `is_safe`, `label`, `category`, ...
    """

    instruction: str
    input: str = ""
    output: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_safe(self) -> bool | None:
        return self.meta.get("is_safe")
