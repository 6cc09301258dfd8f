"""A stage's fingerprint (which names and reuses its run folder) covers exactly what changes its result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from _toy_method import install_toy_method, run_with
from safeft.pipeline.experiment import adopt_legacy_run, expand, load_experiment, plan
from safeft.stages.align import AlignConfig
from safeft.stages.evaluate import EvaluateConfig
from safeft.stages.finetune import FinetuneConfig
from safeft.stages.runs import RunDir, config_fingerprint

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))

STAGE_IDS_SCRIPT = """
import json, sys
from pathlib import Path
from safeft.methods import METHODS
from safeft.pipeline.experiment import expand, load_experiment
ids = {p.stem: [s.id for s in expand(load_experiment(p, {"output": "runs/" + p.stem}))]
       for p in sorted(Path("configs/experiments").glob("*.yaml"))}
print(json.dumps({"methods": list(METHODS), "ids": ids}))
"""


def stage_ids(stage_settings: dict | None = None, **top: object) -> dict[str, list[str]]:
    """The stage ids (kind/name-hash) of every shipped experiment, with `stage_settings` set in every
    `base.<stage>` section and `top` (e.g. data_dir) on the experiment itself."""
    out = {}
    for path in EXPERIMENTS:
        overrides: dict = {"output": f"runs/{path.stem}", **top}
        if stage_settings:
            overrides["base"] = {kind: stage_settings for kind in ("align", "finetune")}
        out[path.stem] = [s.id for s in expand(load_experiment(path, overrides))]
    return out


def legacy_fingerprint(config) -> str:
    """The rule before version 2, written out independently: every field of the config but `output`."""
    data = {k: v for k, v in dataclasses.asdict(config).items() if k != "output"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_the_fingerprint_covers_the_chosen_method_and_the_training_but_not_paths_logging_or_other_methods():
    base = AlignConfig.from_dict({"output": "a", "method": "booster"})
    same = AlignConfig.from_dict(
        {
            "output": "elsewhere",
            "method": "booster",
            "data_dir": "/data",
            "cache_dir": "/cache",
            "train": {"progress": False, "logging_steps": 9, "save_steps": 3},
            "methods": {"vaccine": {"perturbation_radius": 9.0}, "lisa": {"proximal_weight": 3.0}},
        }
    )
    assert config_fingerprint(same) == config_fingerprint(base)
    for changed in (
        {"methods": {"booster": {"harmful_weight": 1.0}}},  # the chosen method's own setting
        {"train": {"learning_rate": 1e-3}},
        {"lora": {"r": 8}},
        {"alignment_samples": 10},
    ):
        other = AlignConfig.from_dict({"output": "a", "method": "booster", **changed})
        assert config_fingerprint(other) != config_fingerprint(base), changed
    ev = EvaluateConfig.from_dict({"output": "e", "model": "m", "data_dir": "/d", "cache_dir": "/c"})
    assert config_fingerprint(ev) == config_fingerprint(
        EvaluateConfig.from_dict({"output": "f", "model": "m"})
    )


def test_shipped_stage_names_survive_progress_logging_saving_and_data_folder_settings():
    names = stage_ids()
    assert set(names) == {p.stem for p in EXPERIMENTS} and all(names.values())
    quiet = {"train": {"progress": False, "logging_steps": 25, "save_steps": 7}}
    assert stage_ids(quiet) == names
    assert stage_ids(data_dir="/somewhere/else") == names


def test_shipped_stage_names_survive_registering_a_new_method(tmp_path):
    plugin = install_toy_method(tmp_path / "plugin")

    without = run_with(None, ["-c", STAGE_IDS_SCRIPT], cwd=ROOT)
    with_toy = run_with(plugin, ["-c", STAGE_IDS_SCRIPT], cwd=ROOT)

    assert without.returncode == 0 and with_toy.returncode == 0, without.stderr + with_toy.stderr
    before, after = json.loads(without.stdout), json.loads(with_toy.stdout)
    assert "toy" not in before["methods"] and "toy" in after["methods"]  # the method really was added
    assert after["ids"] == before["ids"] == stage_ids()


def _write_legacy_runs(stages) -> dict[str, Path]:
    """Each stage finished under the old rule: its folder named with the old hash (taken with other
    data folder and progress settings), its parent named by that folder's path."""
    legacy: dict[str, Path] = {}
    for st in stages:
        cfg = dataclasses.replace(st.config, data_dir="/old/data")
        if isinstance(cfg, FinetuneConfig) and cfg.from_run:
            cfg = dataclasses.replace(cfg, from_run=str(legacy[st.depends_on[0]]))
        if isinstance(cfg, EvaluateConfig) and cfg.run:
            cfg = dataclasses.replace(cfg, run=str(legacy[st.depends_on[0]]))
        if hasattr(cfg, "train"):
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
        old = legacy_fingerprint(cfg)
        path = st.path.parent / f"{st.path.name.rsplit('-', 1)[0]}-{old[:8]}"
        assert path != st.path  # the rule really changed the name
        path.mkdir(parents=True)
        dataclasses.replace(cfg, output=str(path)).save(path / "config.yaml")
        (path / "manifest.json").write_text(
            json.dumps({"stage": st.kind, "status": "done", "fingerprint": old})
        )
        legacy[st.id] = path
    return legacy


def test_runs_finished_under_the_old_rule_are_adopted_under_their_new_names(tmp_path):
    exp = load_experiment(ROOT / "configs/experiments/quickstart.yaml", {"output": str(tmp_path / "runs")})
    legacy = _write_legacy_runs(expand(exp))

    stages = plan(expand(exp))

    assert all(st.cached and st.legacy_path == legacy[st.id] for st in stages)
    for st in stages:
        adopt_legacy_run(st)
    for st in stages:
        old = legacy[st.id]
        assert old.is_symlink() and old.resolve() == st.path.resolve() and not st.path.is_symlink()
        manifest = RunDir.open(st.path).manifest
        assert (
            manifest["fingerprint"] == config_fingerprint(st.config) and manifest["renamed_from"] == old.name
        )
    again = plan(expand(exp))
    assert all(st.cached and st.legacy_path is None for st in again)


def test_a_standalone_run_finished_under_the_old_rule_counts_as_done(tmp_path):
    cfg = AlignConfig.from_dict({"output": str(tmp_path / "run"), "method": "vaccine"})
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    (run / "manifest.json").write_text(json.dumps({"status": "done", "fingerprint": legacy_fingerprint(cfg)}))

    assert RunDir(run).is_done_for(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    )
    assert not RunDir(run).is_done_for(dataclasses.replace(cfg, method="booster"))


def test_an_exact_generation_engine_keeps_an_evaluation_cached_and_vllm_does_not():
    base = EvaluateConfig(output="o", model="m")  # engine "prefix": transformers' exact greedy answers
    assert base.engine == "prefix"
    for exact in ("loop", "hf"):  # evaluations run before "prefix" became the default stay cached
        assert config_fingerprint(dataclasses.replace(base, engine=exact)) == config_fingerprint(base)
    assert config_fingerprint(dataclasses.replace(base, engine="vllm")) != config_fingerprint(base)


def test_a_repair_fingerprint_ignores_where_it_writes_and_the_other_repairs_options():
    from safeft.stages.repair import RepairConfig

    base = RepairConfig(output="a", run="ft", method="safelora")
    other = RepairConfig(output="b", run="ft", method="safelora", data_dir="/elsewhere")
    other.methods.antidote.dense_ratio = 0.3  # another repair's option: same result
    assert config_fingerprint(other) == config_fingerprint(base)
    assert config_fingerprint(dataclasses.replace(base, run="another-ft")) != config_fingerprint(base)
