"""Configs: YAML keys are exactly the fields, CLI overrides win, every problem is reported at once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from safeft.config import Config, option
from safeft.errors import ConfigError, SafeftError


@dataclass
class Inner(Config):
    """An inner section"""

    rho: float = option(2.0, "perturbation radius, ρ", range=(0, None))


@dataclass
class Outer(Config):
    """An outer config"""

    steps: int = option(10, "steps", range=(1, 100))
    mode: str = option("new", "adapter mode", choices=("new", "continue"))
    name: str | None = option(None, "a name")
    flag: bool = option(False, "a flag")
    ratios: list[float] = option(default_factory=lambda: [0.1], help="poison ratios", range=(0, 1))
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_cli_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\nmode: continue\ninner:\n  rho: 3\n")
    cfg = Outer.load(path, {"steps": "7", "inner": {"rho": "4.5"}})
    assert (cfg.steps, cfg.mode, cfg.inner.rho) == (7, "continue", 4.5)


def test_every_problem_is_reported_with_key_value_and_range(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "stpes: 5\nsteps: 500\nmode: old\nflag: maybe\nratios: [0.1, 1.5]\ninner:\n  rho: -1\n  sigma: 2\n"
    )
    with pytest.raises(ConfigError) as e:
        Outer.load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "unknown key 'stpes'; did you mean 'steps'?" in msg
    assert "steps: got 500, expected a value in [1, 100]" in msg
    assert "mode: got 'old', expected one of 'new', 'continue'" in msg
    assert "flag: got 'maybe', expected true or false" in msg
    assert "ratios: got 1.5" in msg
    assert "inner.rho: got -1" in msg
    assert "unknown key 'inner.sigma'" in msg
    assert len(e.value.problems) == 7


def test_saved_config_round_trips(tmp_path):
    cfg = Outer.from_dict({"steps": 3, "name": "x", "ratios": [0.0, 0.2], "inner": {"rho": 1.0}})
    cfg.save(tmp_path / "config.yaml")
    assert Outer.load(tmp_path / "config.yaml") == cfg


def test_cli_flags_are_generated_from_fields_and_only_typed_ones_override():
    parser = argparse.ArgumentParser()
    Outer.add_arguments(parser)
    args = parser.parse_args(["--steps", "9", "--inner.rho", "0.5", "--ratios", "0,0.05"])
    assert Outer.overrides_from_args(args) == {"steps": "9", "inner": {"rho": "0.5"}, "ratios": "0,0.05"}
    cfg = Outer.from_dict(Outer.overrides_from_args(args))
    assert cfg.ratios == [0.0, 0.05] and cfg.inner.rho == 0.5 and cfg.mode == "new"
    assert "perturbation radius" in parser.format_help()


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: 5\nmode: [unclosed\n")
    with pytest.raises(SafeftError, match=r"broken.yaml: not valid YAML at line \d+"):
        Outer.load(path)


def test_missing_config_file():
    with pytest.raises(SafeftError, match="does not exist"):
        Outer.load("/nonexistent/x.yaml")


def test_a_section_keeps_its_own_defaults_under_what_is_given():
    """The attack's training defaults (reference: lr 1e-5, warm-up 0.1, linear) are not the alignment's."""
    from safeft.stages.finetune import FinetuneConfig

    untouched = FinetuneConfig.load(None, {"output": "x", "model": "m"}).train
    assert (untouched.learning_rate, untouched.warmup_ratio, untouched.scheduler) == (1e-5, 0.1, "linear")
    overridden = FinetuneConfig.load(
        None, {"output": "x", "model": "m", "train": {"learning_rate": 1e-3}}
    ).train
    assert (overridden.learning_rate, overridden.warmup_ratio, overridden.scheduler) == (1e-3, 0.1, "linear")
