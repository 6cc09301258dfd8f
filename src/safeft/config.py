"""Typed configs: dataclasses whose fields are exactly the YAML keys and the CLI options.

A config class subclasses `Config` and declares fields with `option(...)`, which carries the help
text and the allowed range or choices. From there this module derives everything else:

- `Cls.load(yaml_path, overrides)`: YAML file, then CLI overrides on top (overrides win);
- validation that reports *every* problem at once (unknown key with a suggestion, wrong type,
  value out of range), naming the key, the value and what is allowed;
- `add_arguments(parser)`: one `--flag` per field (nested configs as `--section.field`), with help;
- `save(path)`: the resolved config, written atomically next to every output.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from safeft.errors import ConfigError, SafeftError
from safeft.io import atomic_write_text

C = TypeVar("C", bound="Config")
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    range: tuple[float | None, float | None] | None = None,
    choices: typing.Sequence[Any] | None = None,
    default_factory: Any = _MISSING,
    fingerprint: bool | typing.Callable[[Any], bool] = True,
) -> Any:
    """A config field with its help text and the values it accepts (`range` is inclusive).

    `fingerprint=False` marks a field that cannot change a stage's result (where to write, how
    often to log or checkpoint, a progress bar, where files are found): it is left out of the
    fingerprint that names and reuses run folders (`Config.fingerprint_data`). A function of the
    value instead says for which values the field counts (a generation engine that gives the exact
    same answers as the default one does not).
    """
    metadata = {
        "help": help,
        "range": range,
        "choices": tuple(choices) if choices is not None else None,
        "fingerprint": fingerprint,
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or CLI value to the field's type; raise ValueError with a readable message."""
    inner, optional = _strip_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(f"{key}: got null, expected a value of type {getattr(inner, '__name__', inner)}")
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(inner) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: got {value!r}, expected a list")
        return [_coerce(v, item_tp, key) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"{key}: got {value!r}, expected true or false")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{key}: got {value!r}, expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: got {value!r}, expected an integer") from None
    if inner is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: got {value!r}, expected a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: got {value!r}, expected a number") from None
        if not math.isfinite(number):  # NaN passes every range check; no option means inf
            raise ValueError(f"{key}: got {value!r}, expected a finite number")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{key}: got {value!r}, expected a string")
        return str(value)
    if isinstance(inner, type) and issubclass(inner, Config):
        return value  # handled by the caller
    return value


@dataclasses.dataclass
class Config:
    """Base class of every safeft config."""

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        problems: list[str] = []
        obj = cls._build(data, prefix="", problems=problems)
        if problems:
            raise ConfigError(problems, source)
        return obj

    @classmethod
    def _build(cls: type[C], data: dict[str, Any], prefix: str, problems: list[str]) -> C:
        if not isinstance(data, dict):
            problems.append(f"{prefix or 'config'}: expected a mapping of keys to values, got {data!r}")
            return cls._defaults_or_none()  # type: ignore[return-value]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
                problems.append(f"unknown key '{prefix}{key}'{hint} (allowed: {', '.join(fields)})")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            tp = hints[name]
            inner, _ = _strip_optional(tp)
            if isinstance(inner, type) and issubclass(inner, Config):
                sub = data.get(name, {}) or {}
                if isinstance(sub, dict) and f.default_factory is not _MISSING:  # type: ignore[misc]
                    # The section's own defaults (e.g. the attack's training settings) under what was given.
                    sub = deep_merge(f.default_factory().to_dict(), sub)  # type: ignore[misc]
                kwargs[name] = inner._build(sub, prefix=f"{prefix}{name}.", problems=problems)
                continue
            if name not in data:
                if f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
                    problems.append(f"missing required key '{prefix}{name}': {f.metadata.get('help', '')}")
                continue
            try:
                value = _coerce(data[name], tp, f"{prefix}{name}")
            except ValueError as e:
                problems.append(str(e))
                continue
            problems.extend(_check_allowed(f"{prefix}{name}", value, f.metadata))
            kwargs[name] = value
        try:
            obj = cls(**kwargs)
        except TypeError:
            return cls._defaults_or_none()  # type: ignore[return-value]
        problems.extend(f"{prefix}{p}" for p in obj.check())
        return obj

    @classmethod
    def _defaults_or_none(cls) -> Any:
        try:
            return cls()
        except TypeError:
            return None

    @classmethod
    def load(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
        """YAML file (optional), then `overrides` (nested dict) on top; every problem reported at once."""
        data: dict[str, Any] = {}
        source = "command-line options"
        if path is not None:
            data = read_yaml(path)
            source = str(path)
        merged = deep_merge(data, overrides or {})
        return cls.from_dict(merged, source=source)

    def check(self) -> list[str]:
        """Cross-field checks; return problems as 'key: got X, expected Y' strings. Override as needed."""
        return []

    # ----- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint_data(self) -> dict[str, Any]:
        """The values that determine a stage's result: every field but those declared `fingerprint=False`
        (or whose `fingerprint` function says this value does not count)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            counts = f.metadata.get("fingerprint", True)
            value = getattr(self, f.name)
            if not (counts(value) if callable(counts) else counts):
                continue
            out[f.name] = value.fingerprint_data() if isinstance(value, Config) else value
        return out

    def to_yaml(self) -> str:
        data = self.to_dict()
        # Plain keys first, then the sections (train:, lora:, methods:), whatever class declared them.
        ordered = {k: v for k, v in data.items() if not isinstance(v, dict)}
        ordered.update({k: v for k, v in data.items() if isinstance(v, dict)})
        return yaml.safe_dump(ordered, sort_keys=False)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    # ----- command line -------------------------------------------------------------------------
    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser | Any, prefix: str = "", skip: tuple[str, ...] = ()
    ) -> None:
        """One option per field; defaults are suppressed so only what the user typed overrides YAML."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init or f.name in skip:
                continue
            tp = hints[f.name]
            inner, _ = _strip_optional(tp)
            if isinstance(inner, type) and issubclass(inner, Config):
                title = (inner.__doc__ or f.name).strip().splitlines()[0]
                # Sections are groups of the top-level parser (argparse deprecates groups inside groups).
                root = getattr(parser, "_safeft_root", parser)
                group = root.add_argument_group(f"{prefix}{f.name}: {title}")
                group._safeft_root = root
                inner.add_arguments(group, prefix=f"{prefix}{f.name}.")
                continue
            flag = "--" + (prefix + f.name).replace("_", "-")
            default = (
                f.default
                if f.default is not _MISSING
                else (f.default_factory() if f.default_factory is not _MISSING else None)
            )  # type: ignore[misc]
            extra = []
            if f.metadata.get("choices"):
                extra.append("choices: " + ", ".join(map(str, f.metadata["choices"])))
            if f.metadata.get("range"):
                lo, hi = f.metadata["range"]
                extra.append(f"range: [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
            help_text = (
                f"{f.metadata.get('help', '')} (default: {default}{'; ' + '; '.join(extra) if extra else ''})"
            )
            parser.add_argument(
                flag,
                dest=f"cfg:{prefix}{f.name}",
                default=argparse.SUPPRESS,
                metavar=_metavar(inner),
                help=help_text.replace("%", "%%"),
            )

    @staticmethod
    def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
        """Collect the `cfg:` options the user typed into a nested dict."""
        out: dict[str, Any] = {}
        for dest, value in vars(args).items():
            if not dest.startswith("cfg:"):
                continue
            node = out
            *parents, leaf = dest[4:].split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out


def _metavar(tp: Any) -> str:
    if tp is bool:
        return "{true,false}"
    if typing.get_origin(tp) in (list, tuple):
        return "A,B,..."
    return getattr(tp, "__name__", "VALUE").upper()


def _check_allowed(key: str, value: Any, metadata: Any) -> list[str]:
    problems = []
    values = value if isinstance(value, list) else [value]
    choices, rng = metadata.get("choices"), metadata.get("range")
    for v in values:
        if v is None:
            continue
        if choices and v not in choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}: got {v!r}, expected one of {', '.join(map(repr, choices))}{hint}")
        if rng and isinstance(v, (int, float)):
            lo, hi = rng
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                problems.append(
                    f"{key}: got {v!r}, expected a value in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                )
    return problems


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SafeftError(
            f"config file {path} does not exist. Pass the path of a YAML file (see configs/ for examples)."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SafeftError(
            f"config file {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SafeftError(f"config file {path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SafeftError(
            f"config file {path}: expected a mapping of keys to values at the top level, got {type(data).__name__}"
        )
    return data
