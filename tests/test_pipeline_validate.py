"""`safeft validate`: every shipped YAML passes; kinds are inferred; every problem is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeft.cli import main
from safeft.errors import ConfigError
from safeft.pipeline.validate import validate_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("**/*.yaml"))


def test_configs_are_shipped():
    names = {p.relative_to(CONFIGS).as_posix() for p in SHIPPED}
    assert {
        "experiments/quickstart.yaml",
        "experiments/booster_cpu_repro.yaml",
        "experiments/booster_gpu_reference.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_shipped_config_validates(path):
    kind = validate_file(path)
    expected = {"experiments": "experiment"}.get(path.parent.name, path.parent.name)
    assert kind == expected


def test_kind_is_inferred_from_the_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("method: booster\nmethods:\n  booster:\n    harmful_weight: 2\n")
    (tmp_path / "f.yaml").write_text("poison_ratio: 0.2\nfrom_run: runs/x\n")
    (tmp_path / "e.yaml").write_text("judge: keyword\nrun: runs/x\ntask: sst2\n")
    assert [validate_file(tmp_path / f"{k}.yaml") for k in "afe"] == ["align", "finetune", "evaluate"]


def test_the_closest_kind_reports_all_its_problems(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: boostr\ntrain:\n  learning_rate: -1\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as e:
        validate_file(path)
    text = str(e.value)
    assert (
        "align config" in text
        and "did you mean 'booster'" in text
        and "learning_rate: got -1.0" in text
        and "train.batch_size" in text
    )


def test_an_experiment_is_checked_down_to_its_stages(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: x\nbase:\n  finetune:\n    samples: 0\ngrid:\n  methods: [sft, vacine]\n  poison_ratios: [0.1, 1.5]\n"
    )
    with pytest.raises(ConfigError) as e:
        validate_file(path)
    text = str(e.value)
    assert "poison_ratios: got 1.5" in text
    path.write_text("name: x\nbase:\n  finetune:\n    samples: 0\ngrid:\n  methods: [sft, vacine]\n")
    with pytest.raises(ConfigError) as e:
        validate_file(path)
    assert "did you mean 'vaccine'" in str(e.value) and "samples: got 0" in str(e.value)


def test_cli_validate_reports_each_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {}\n")
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(CONFIGS / "experiments" / "quickstart.yaml"), str(bad), str(missing)]) == 2
    out = capsys.readouterr().out
    assert "ok   " in out and "name: required" in out and "does not exist" in out
    assert "grid: got {}, expected the axes of the experiment" in out
