"""A method added in one file (plus its package's entry point) reaches every place a method is used:
the stage's options, the experiment grid and the benchmark, with nothing else edited."""

from __future__ import annotations

import json
import re

import pytest

from _toy_method import install_toy_method, run_with

TOY_EXPERIMENT = """
name: toy
base:
  align: {model: tiny-random-llama}
grid:
  methods: [sft, toy]
  method_options: {toy: {loss_scale: [0.5, 2]}}
  include_no_defense: false
"""


def method_choices(help_text: str) -> str:
    """The help of the --method option (its choices), up to the next option."""
    return re.search(r"\n  --method STR(.*?)\n  --", help_text, re.S).group(1)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_toy_method(tmp_path_factory.mktemp("plugin"))


def test_the_align_stage_offers_the_new_method_and_its_options(plugin):
    align = run_with(plugin, ["-m", "safeft", "align", "--help"])
    finetune = run_with(plugin, ["-m", "safeft", "finetune", "--help"])

    assert align.returncode == 0, align.stderr
    assert "toy" in method_choices(align.stdout)
    assert "--methods.toy.loss-scale" in align.stdout and "factor on the loss" in align.stdout
    assert "--methods.toy.loss-scale" in finetune.stdout  # every stage config has every section
    assert "toy" not in method_choices(finetune.stdout)  # an alignment-stage method


def test_an_experiment_grids_over_the_new_method_and_its_options(plugin, tmp_path):
    (tmp_path / "toy.yaml").write_text(TOY_EXPERIMENT)

    out = run_with(plugin, ["-m", "safeft", "run", str(tmp_path / "toy.yaml"), "--dry-run"], cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    aligns = sorted(re.findall(r"^\s+\d+/\d+\s+run\s+(align/\S+)", out.stdout, re.M))
    assert [a.rsplit("-", 1)[0] for a in aligns] == [
        "align/sft-s42",
        "align/toy-loss_scale0.5-s42",
        "align/toy-loss_scale2-s42",
    ]


def test_the_benchmark_steps_the_new_method_and_names_its_cost(plugin, tmp_path):
    out = tmp_path / "bench.md"
    args = ["-m", "safeft", "bench", "--smoke", "--reps", "1", "--output", str(out)]

    done = run_with(plugin, [*args, "--methods", "sft,toy"])

    assert done.returncode == 0, done.stderr
    table = json.loads(out.with_suffix(".json").read_text())["training"]["fp32"]
    assert list(table) == ["sft", "toy"] and table["toy"]["time_ratio"] > 0
    assert "| toy | 1 scaled pass |" in out.read_text()
    listed = run_with(
        plugin, ["-c", "from safeft.bench import BenchSettings; print(BenchSettings().methods)"]
    )
    assert "'toy'" in listed.stdout  # `safeft bench` without --methods benchmarks it too
