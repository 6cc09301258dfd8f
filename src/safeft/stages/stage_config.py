"""What the align, finetune and repair stage configs share: where the run goes, where data and models
come from, and a method chosen by name whose own section of `methods` is the only one that counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safeft.config import Config, option
from safeft.data.templates import TEMPLATES


@dataclass
class MethodStageConfig(Config):
    """Common fields of a stage run by a named method; a subclass sets `method`'s choices and adds
    `methods`, one section per method (`--methods.<name>.<field>`)."""

    output: str = option(
        None, "run directory to write (created; an unfinished run there is resumed)", fingerprint=False
    )
    method: str = option("sft", "method, by name")
    data_dir: str | None = option(
        None,
        "folder with the local data files (default: $SAFEFT_DATA_DIR, then the Hub)",
        fingerprint=False,
    )
    max_length: int = option(256, "tokens per row after truncation", range=(8, None))
    template: str = option("alpaca", "prompt template", choices=TEMPLATES)
    cache_dir: str | None = option(
        None, "model cache (default: $SAFEFT_CACHE or ~/.cache/safeft)", fingerprint=False
    )

    @property
    def method_config(self) -> Any:
        """The chosen method's own section of `methods`."""
        return getattr(self.methods, self.method.replace("-", "_"))  # type: ignore[attr-defined]

    def fingerprint_data(self) -> dict[str, Any]:
        # Only the chosen method's section can change the result: registering a method or changing
        # another method's defaults must not rename (and so orphan) every cached run.
        data = super().fingerprint_data()
        data["methods"] = {self.method: self.method_config.fingerprint_data()}
        return data

    def check(self) -> list[str]:
        return [] if self.output else ["output: required (the run directory to write)"]
