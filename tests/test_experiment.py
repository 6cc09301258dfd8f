"""Experiments: grid expansion, stage reuse, the plan, dry runs, config errors, and a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _stage_support import ONE_ATTACK, experiment_dict
from safeft.errors import ConfigError
from safeft.pipeline import experiment as ex
from safeft.stages.runs import config_fingerprint


def build(tmp_path: Path, **grid) -> list[ex.Stage]:
    return ex.expand(ex.ExperimentConfig.from_dict(experiment_dict(tmp_path, **grid)))


def by_kind(stages: list[ex.Stage], kind: str) -> list[ex.Stage]:
    return [s for s in stages if s.kind == kind]


def test_grid_expands_to_one_alignment_per_method_and_seed_shared_by_every_attack(tmp_path):
    stages = build(tmp_path)
    aligns, attacks, evals = (
        by_kind(stages, "align"),
        by_kind(stages, "finetune"),
        by_kind(stages, "evaluate"),
    )
    assert len(aligns) == 2 * 2  # methods x seeds, whatever the number of poison ratios
    assert len(attacks) == 2 * 2 * 2 + 2 * 2  # defended (method x seed x p) + no defense (seed x p)
    assert (
        len(evals) == len(attacks) + 2 * 2 + 1
    )  # every attack + each aligned model unattacked + the base model
    assert sorted(s.path.name.rsplit("-", 1)[0] for s in aligns) == [
        "booster-s1",
        "booster-s2",
        "sft-s1",
        "sft-s2",
    ]
    for align in aligns:
        children = [s for s in attacks if s.depends_on == [align.id]]
        assert sorted(s.labels["poison_ratio"] for s in children) == [0.05, 0.1]
        assert all(
            s.config.from_run == str(align.path) and s.config.train.seed == align.config.train.seed
            for s in children
        )
        assert align.path.parent == tmp_path / "runs" / "align"
    undefended = [s for s in attacks if s.labels["method"] == ex.NO_DEFENSE]
    assert all(
        s.config.model == "tiny-random-llama" and s.config.from_run is None and not s.depends_on
        for s in undefended
    )
    for ev in evals:
        assert ev.config.task == "sst2"
        if ev.labels["attacked"]:
            assert ev.config.run == str(next(s.path for s in attacks if s.id == ev.depends_on[0]))


def test_stages_come_after_their_dependencies_and_ids_are_stable(tmp_path):
    stages = build(tmp_path)
    seen: set[str] = set()
    for st in stages:
        assert set(st.depends_on) <= seen, st.id
        seen.add(st.id)
    assert len(seen) == len(stages)
    assert [s.id for s in build(tmp_path)] == [s.id for s in stages]


def test_changing_the_attack_keeps_the_alignments_and_renames_the_attacks(tmp_path):
    before = build(tmp_path)
    data = experiment_dict(tmp_path)
    data["base"]["finetune"]["train"]["learning_rate"] = 5e-4
    after = ex.expand(ex.ExperimentConfig.from_dict(data))
    ids = lambda stages, kind: {s.id for s in by_kind(stages, kind)}  # noqa: E731
    assert ids(before, "align") == ids(after, "align")
    assert not ids(before, "finetune") & ids(after, "finetune")


def test_attack_sweep_axes_multiply_the_attacks(tmp_path):
    stages = build(
        tmp_path,
        **ONE_ATTACK,
        attack={"learning_rate": [1e-4, 1e-3], "samples": [8, 16]},
    )
    attacks = by_kind(stages, "finetune")
    assert len(attacks) == 4
    assert {(s.config.train.learning_rate, s.config.samples) for s in attacks} == {
        (1e-4, 8),
        (1e-4, 16),
        (1e-3, 8),
        (1e-3, 16),
    }
    assert any("-lr0.0001-n8-" in s.path.name for s in attacks)
    assert all(s.labels["attack"].keys() == {"learning_rate", "samples"} for s in attacks)


def test_method_options_sweep_a_defense_s_own_knobs(tmp_path):
    """Each combination of a method's swept hyper-parameters is its own alignment, attacks and report row."""
    sweep = {"booster": {"simulated_step_size": [0.1, 1.0], "harmful_weight": [5, 20]}}
    stages = build(tmp_path, seeds=[1], method_options=sweep)
    boosters = [s for s in by_kind(stages, "align") if s.config.method == "booster"]
    assert len(boosters) == 4 and len([s for s in by_kind(stages, "align") if s.config.method == "sft"]) == 1
    settings = {
        (s.config.methods.booster.simulated_step_size, s.config.methods.booster.harmful_weight)
        for s in boosters
    }
    assert settings == {(0.1, 5), (0.1, 20), (1.0, 5), (1.0, 20)}
    one = next(
        s
        for s in boosters
        if s.config.methods.booster.simulated_step_size == 1.0
        and s.config.methods.booster.harmful_weight == 20
    )
    assert one.path.name.startswith("booster-simulated_step_size1-harmful_weight20-s1-")
    assert one.labels["method"] == "booster (simulated_step_size=1, harmful_weight=20)"
    attacks = [s for s in by_kind(stages, "finetune") if s.depends_on == [one.id]]
    assert len(attacks) == 2 and all(s.labels["method"] == one.labels["method"] for s in attacks)
    assert all(
        s.path.name.startswith("booster-simulated_step_size1-harmful_weight20-s1-sst2-p") for s in attacks
    )


def test_method_options_are_checked(tmp_path):
    bad = {"booster": {"simulated_step": [1.0]}, "vaccine": {"perturbation_radius": [1.0]}, "sft": {}}
    with pytest.raises(ConfigError) as e:
        ex.ExperimentConfig.from_dict(experiment_dict(tmp_path, method_options=bad))
    text = str(e.value)
    assert "method_options.booster.simulated_step: not a field of booster" in text
    assert "method_options.vaccine: not among grid.methods" in text
    assert "method_options.sft: got {}" in text
    out_of_range = {"booster": {"simulated_step_size": [-1.0]}}
    with pytest.raises(ConfigError, match="simulated_step_size: got -1.0"):
        ex.expand(ex.ExperimentConfig.from_dict(experiment_dict(tmp_path, method_options=out_of_range)))


def test_every_problem_of_every_stage_is_reported_once(tmp_path):
    data = experiment_dict(tmp_path, methods=["sft", "boostr"])
    data["base"]["align"]["train"]["learing_rate"] = 1e-3
    data["base"]["evaluate"]["run"] = "somewhere"
    with pytest.raises(ConfigError) as e:
        ex.expand(ex.ExperimentConfig.from_dict(data))
    text = str(e.value)
    assert "did you mean 'booster'" in text
    assert text.count("learing_rate") == 1 and "did you mean 'train.learning_rate'" in text
    assert "evaluate.run" in text  # a key the grid sets
    data = experiment_dict(tmp_path, attack={"epochs": [1, 2]})
    with pytest.raises(ConfigError, match="grid.attack.epochs: has no effect"):
        ex.expand(ex.ExperimentConfig.from_dict(data))


def test_plan_marks_done_stages_cached_so_an_unchanged_rerun_runs_nothing(tmp_path):
    stages = ex.plan(build(tmp_path))
    assert not any(s.cached for s in stages)
    first = stages[0]
    first.path.mkdir(parents=True)
    (first.path / "manifest.json").write_text(json.dumps({"status": "done", "fingerprint": "something else"}))
    assert not ex.plan([first])[0].cached  # done, but with another config: rerun
    for st in stages:
        st.path.mkdir(parents=True, exist_ok=True)
        (st.path / "manifest.json").write_text(
            json.dumps({"status": "done", "fingerprint": config_fingerprint(st.config)})
        )
    assert all(s.cached for s in ex.plan(build(tmp_path)))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment_dict(tmp_path, **ONE_ATTACK)))
    assert ex.run_experiment(path, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "experiment tiny: 4 stages, 0 cached, 4 to run" in out
    assert "1/4  run" in out and "align/sft-s1-" in out and "after align/sft-s1-" in out
    assert not (tmp_path / "runs").exists()


def test_resolved_stage_config_survives_its_yaml_file(tmp_path):
    """The multi-process path hands each stage its config as YAML: the fingerprint must not change."""
    for st in build(tmp_path):
        st.config.save(tmp_path / "c.yaml")
        assert config_fingerprint(type(st.config).load(tmp_path / "c.yaml")) == config_fingerprint(st.config)


def test_several_processes_launch_each_stage_with_its_resolved_config(tmp_path, monkeypatch):
    import safeft.launch

    calls = []

    def launch(argv, n):
        calls.append((argv, n, yaml.safe_load(Path(argv[2]).read_text())))
        return 0

    monkeypatch.setattr(safeft.launch, "launch", launch)
    stage = build(tmp_path)[0]
    ex.run_stage(stage, num_processes=2)
    ((argv, n, config),) = calls
    assert argv[:2] == [stage.kind, "--config"] and n == 2
    assert config["output"] == str(stage.path)
    # the file is handed over beside the run folder (which is the stage's to claim) and removed after
    assert not stage.path.exists() and not Path(argv[2]).exists()


def test_tiny_experiment_runs_then_reruns_nothing(tmp_path, capsys, caplog):
    """A real run on the tiny model: every stage done, report written; the same command again skips them all."""
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            experiment_dict(
                tmp_path, methods=["sft", "booster"], seeds=[1], poison_ratios=[0.1], include_no_defense=False
            )
        )
    )
    caplog.set_level("INFO", logger="safeft")
    assert ex.run_experiment(path) == 0
    assert "stage 8/8: evaluate/" in caplog.text
    runs = tmp_path / "runs"
    for st in json.loads((runs / "experiment.json").read_text())["stages"]:
        assert json.loads((runs / st["id"] / "manifest.json").read_text())["status"] == "done"
    md = (runs / "results.md").read_text()
    assert "| sft |" in md and "| booster |" in md and (runs / "plots" / "alignment_loss.png").is_file()
    capsys.readouterr()
    assert ex.run_experiment(path, dry_run=True) == 0
    assert "8 stages, 8 cached, 0 to run" in capsys.readouterr().out
    caplog.clear()
    assert ex.run_experiment(path) == 0
    assert caplog.text.count("(cached, skipped)") == 8


def test_fingerprint_counts_only_the_chosen_methods_options(tmp_path):
    from safeft.stages.align import AlignConfig

    base = AlignConfig(output=str(tmp_path / "a"), method="booster")
    other = AlignConfig(output=str(tmp_path / "a"), method="booster")
    other.methods.repnoise.ascent_weight = 0.5  # another method's option: same stage result
    assert config_fingerprint(other) == config_fingerprint(base)
    other.methods.booster.harmful_weight = 1.0  # the chosen method's option: a different stage
    assert config_fingerprint(other) != config_fingerprint(base)


def test_repairs_axis_adds_a_repair_and_its_evaluation_per_attack(tmp_path):
    stages = build(tmp_path, repairs=["none", "antidote", "safelora"])
    attacks, repairs = by_kind(stages, "finetune"), by_kind(stages, "repair")
    defended = [s for s in attacks if s.labels["method"] != ex.NO_DEFENSE]
    # every defended attack gets both repairs; the no-defense attacks only Antidote (SafeLoRA needs an alignment)
    assert len(repairs) == 2 * len(defended) + (len(attacks) - len(defended))
    for rep in repairs:
        (parent,) = [s for s in attacks if s.id == rep.depends_on[0]]
        assert rep.config.run == str(parent.path) and rep.config.method == rep.labels["repair"]
        assert rep.labels["method"] == f"{parent.labels['method']} + {rep.config.method}"
        (evaluation,) = [s for s in stages if s.kind == "evaluate" and s.depends_on == [rep.id]]
        assert evaluation.config.run == str(rep.path) and evaluation.labels == rep.labels
    assert not [r for r in repairs if r.labels["method"] == f"{ex.NO_DEFENSE} + safelora"]
    unrepaired = build(tmp_path)  # repairs default to none: the same stages as before the axis existed
    assert {s.id for s in unrepaired} == {s.id for s in stages if "repair" not in s.labels}


def test_repairs_axis_is_checked(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(tmp_path, repairs=["antidot", "none", "none"])
    assert "did you mean 'antidote'" in str(e.value) and "duplicate" in str(e.value)


def test_tiny_experiment_with_repairs_runs_and_reports_each_repair_as_a_row(tmp_path):
    data = experiment_dict(
        tmp_path,
        **ONE_ATTACK,
        include_unattacked=False,
        repairs=["none", "antidote", "safelora"],
    )
    pool = data["base"]["align"]["harmful_data"]
    data["base"]["repair"] = {
        "max_length": 48,
        "methods": {"antidote": {"calibration_data": pool, "calibration_samples": 8}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    assert ex.run_experiment(path) == 0
    md = (tmp_path / "runs" / "results.md").read_text()
    assert "| sft |" in md and "| sft + antidote |" in md and "| sft + safelora |" in md


def test_finetune_methods_axis_adds_a_row_per_fine_tuning_stage_defense(tmp_path):
    plain = build(tmp_path)
    stages = build(tmp_path, finetune_methods=["sft", "panacea"])
    attacks = by_kind(stages, "finetune")
    assert {s.config.method for s in attacks} == {"sft", "panacea"}
    assert len(attacks) == 2 * len(by_kind(plain, "finetune"))
    # the sft attacks are the very stages the grid had without the axis; panacea's are labelled rows
    assert {s.id for s in attacks if s.config.method == "sft"} == {s.id for s in by_kind(plain, "finetune")}
    for s in attacks:
        if s.config.method == "panacea":
            assert s.labels["method"].endswith(" + panacea") and s.path.name.split("-")[-2] == "panacea"
