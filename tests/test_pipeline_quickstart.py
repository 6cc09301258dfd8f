"""The quickstart: its experiment file, the demo data, and the data-source choice (no model runs here)."""

from __future__ import annotations

import pytest

from safeft.data.sources import load_source
from safeft.data.tasks import get_task
from safeft.errors import SafeftError
from safeft.pipeline import quickstart as qs
from safeft.pipeline.demo_data import BANNER, write_demo_data
from safeft.pipeline.experiment import expand, load_experiment


def test_demo_data_roles_are_disjoint_and_load_as_their_sources(tmp_path):
    paths = write_demo_data(tmp_path)
    prompts = {
        role: {r.instruction for r in load_source(paths[role])}
        for role in ("refusals", "harmful_pool", "attack", "eval_prompts")
    }
    roles = list(prompts)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            assert not prompts[a] & prompts[b], (a, b)
    attack = load_source(paths["attack"])
    assert all(r.output and "placeholder" in r.output for r in attack)
    train = get_task("sst2").load_train(paths["sst2_train"])
    assert {r.output for r in train} == {"positive", "negative"}
    assert sum(r.output == "positive" for r in train) == len(train) // 2
    assert len(get_task("sst2").load_eval(paths["sst2_eval"])) == 200


def test_quickstart_experiment_is_sft_vs_booster_with_one_attack(tmp_path):
    exp = load_experiment(qs.quickstart_config(), {"output": str(tmp_path / "qs"), "data_dir": "/data"})
    stages = expand(exp)
    aligns = [s for s in stages if s.kind == "align"]
    assert sorted(s.config.method for s in aligns) == ["booster", "sft"]
    assert all(
        s.config.model == "smollm2-135m" and s.config.data_dir == "/data" for s in stages if s.kind == "align"
    )
    assert {s.config.poison_ratio for s in stages if s.kind == "finetune"} == {0.2}
    assert {s.config.judge for s in stages if s.kind == "evaluate"} == {"cpu"}


def test_demo_mode_points_every_stage_at_the_demo_files(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SAFEFT_DATA_DIR", raising=False)
    seen = {}
    monkeypatch.setattr(qs, "execute", lambda exp, **kw: seen.setdefault("stages", expand(exp)) and 0)
    assert qs.run_quickstart(tmp_path / "qs") == 0
    out = capsys.readouterr().out
    assert out.count(BANNER) == 2 and "--data-dir" in out
    demo = tmp_path / "qs" / "demo_data"
    for st in seen["stages"]:
        cfg = st.config
        assert cfg.data_dir is None
        for key in ("alignment_data", "harmful_data", "task_data", "eval_prompts", "harmful_prompts"):
            if hasattr(cfg, key) and not (st.kind == "align" and key == "task_data"):
                assert str(getattr(cfg, key)).startswith(str(demo)), (st.id, key)


def test_a_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SafeftError, match="no such folder"):
        qs.run_quickstart(tmp_path / "qs", data_dir=str(tmp_path / "nope"))
