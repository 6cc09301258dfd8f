"""User-facing errors: one paragraph that says what was received, what was expected and how to fix it.

The CLI prints a `SafeftError` without a traceback (unless `--debug`) and exits with a non-zero code.
Anything else that escapes is a bug in safeft and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SafeftError(Exception):
    """An error caused by the user's input (a file, a row, a field, a name, a value)."""

    exit_code = 2


class ConfigError(SafeftError):
    """A config is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class DataError(SafeftError):
    """Bad data: names the file, the row (1-based line number where there is one) and the field."""

    def __init__(
        self, message: str, *, path: str | None = None, row: int | None = None, field: str | None = None
    ):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def unknown_name(kind: str, name: str, available: Iterable[str]) -> SafeftError:
    """'unknown model 'smolm2': did you mean 'smollm2-135m'? available: ...'."""
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return SafeftError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(available)}.")
