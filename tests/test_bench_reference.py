"""`safeft bench --reference`: the papers' trainers stepped beside safeft's, imported from checkouts.

The plumbing is tested with a small fake checkout written here (written for transformers 4's Trainer
API, as the references are), so it runs without the real repositories; one test runs the real
checkouts of /work/refs (or $SAFEFT_REFS) and is skipped when they are absent.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from safeft.bench.reference import alternating_groups, find_reference_trainers
from safeft.cli import main
from safeft.methods.booster import BoosterConfig

# A reference-style Booster trainer: the transformers 4 `training_step(model, inputs)` signature, the
# `use_apex` attribute and the `is_torch_tpu_available` import Trainer 5 no longer has, its
# hyper-parameters read from `self.args`, its harmful batches from `self.harmful_data_iter`. It
# writes what it saw to seen.jsonl beside itself.
FAKE_TRAINER = textwrap.dedent(
    """
    import json
    from pathlib import Path

    from transformers import Trainer
    from transformers.file_utils import is_torch_tpu_available
    from utils import harmful_term

    SEEN = Path(__file__).with_name("seen.jsonl")


    class BoosterAlignmentTrainer(Trainer):
        def training_step(self, model, inputs):
            model.train()
            inputs = self._prepare_inputs(inputs)
            harmful = self._prepare_inputs(next(self.harmful_data_iter))
            loss = self.compute_loss(model, inputs) + harmful_term(self.args.lamb, self.compute_loss(model, harmful))
            if self.use_apex:
                raise RuntimeError("apex is not installed")
            self.accelerator.backward(loss)
            with SEEN.open("a") as f:
                f.write(json.dumps({
                    "lamb": self.args.lamb,
                    "alpha": self.args.alpha,
                    "tpu": is_torch_tpu_available(),
                    "harmful_rows": int(harmful["input_ids"].shape[0]),
                    "rows": int(inputs["input_ids"].shape[0]),
                }) + "\\n")
            return loss.detach()
    """
)


@pytest.fixture
def fake_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "fake+Booster"
    checkout.mkdir()
    (checkout / "trainer.py").write_text(FAKE_TRAINER)
    # `utils` is a name every reference checkout uses for its own module (cleared after the import).
    (checkout / "utils.py").write_text("def harmful_term(weight, loss):\n    return 0.01 * weight * loss\n")
    return checkout


def test_reference_steps_run_beside_safeft_with_the_same_settings(fake_checkout, tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\nThe rest of the page.\n")
    args = ["bench", "--smoke", "--reference", str(fake_checkout), "--reps", "2", "--output", str(out)]
    args += ["--compare", "full-logits"]

    assert main(args) == 0

    data = json.loads(out.with_suffix(".reference.json").read_text())
    rows = data["reference"]["fp32"]
    assert list(rows) == ["sft", "booster"]  # transformers.Trainer is the references' SFT
    for method, group in rows.items():
        assert set(group) == {"reference", "safeft", "full-logits"}, method
        ref = group["reference"]
        for ours in (group["safeft"], group["full-logits"]):
            assert ours["time_ratio"] == pytest.approx(ours["seconds"]["median"] / ref["seconds"]["median"])
            assert ours["time_ratio_min"] <= ours["time_ratio"] <= ours["time_ratio_max"]
            cpu = ours["cpu_seconds"]["median"] / ref["cpu_seconds"]["median"]
            assert ours["cpu_time_ratio"] == pytest.approx(cpu)
            assert ref["memory"]["peak_bytes"] > 0 and ours["memory"]["peak_bytes"] > 0
        # the full logits (batch x length x vocabulary) are formed only by the full-logits variant
        assert group["full-logits"]["memory"]["peak_bytes"] > group["safeft"]["memory"]["peak_bytes"]
    assert "fake+Booster" in data["reference_sources"]["booster"]
    assert data["reference_sources"]["sft"].startswith("transformers.Trainer")
    # bf16 on a CPU without native bf16 is reported as not measurable rather than emulated.
    from safeft.hardware import native_bf16

    assert ("bf16" in data["not_measured"]) == (not native_bf16())

    # The fake trainer ran with safeft's Booster values and batch sizes, under the shims:
    # warm-up + memory round + 2 timed rounds.
    seen = [json.loads(line) for line in (fake_checkout / "seen.jsonl").read_text().splitlines()]
    assert len(seen) == 4
    defaults = BoosterConfig()
    assert {s["lamb"] for s in seen} == {defaults.harmful_weight}
    assert {s["alpha"] for s in seen} == {defaults.simulated_step_size}
    assert {(s["rows"], s["harmful_rows"], s["tpu"]) for s in seen} == {(2, 2, False)}
    assert not list(fake_checkout.rglob("__pycache__"))  # the checkout is left untouched

    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nThe rest of the page.\n")
    assert "| booster (fp32) | fake+Booster" in text
    assert "- full-logits: the loss from the full logits" in text  # what each variant row is

    # A second run replaces its section instead of adding another one.
    assert main(args) == 0
    assert out.read_text().count("## Against the papers' reference trainers") == 1


@pytest.mark.parametrize(("variant", "foreach"), [("adamw-foreach", True), ("adamw-forloop", False)])
def test_optimizer_variants_swap_the_fused_adamw_for_another_implementation(variant, foreach, tmp_path):
    import torch

    from _methods_support import args, collate, rows, tiny, trainer
    from safeft.bench import variant_trainer
    from safeft.methods import METHODS

    plain = trainer("sft", tiny(), tmp_path)
    plain.create_optimizer()
    assert plain.optimizer.defaults["fused"] is True  # TrainingArguments' default: the fused kernel

    cls = variant_trainer(METHODS["sft"].trainer_cls, variant)
    t = cls(model=tiny(), args=args(tmp_path), train_dataset=rows(4, seed=1), data_collator=collate)
    t.create_optimizer()
    assert isinstance(t.optimizer, torch.optim.AdamW)
    assert not t.optimizer.defaults["fused"] and t.optimizer.defaults["foreach"] is foreach
    assert t.optimizer.defaults["lr"] == plain.optimizer.defaults["lr"]


def test_the_checkpointed_variant_steps_the_method_with_checkpointing_on(tmp_path):
    from _methods_support import args, collate, rows, tiny, trainer
    from safeft.bench import variant_trainer
    from safeft.methods import METHODS

    assert trainer("tvaccine", tiny(), tmp_path).checkpointing.taken == "off"  # the default: speed first
    cls = variant_trainer(METHODS["tvaccine"].trainer_cls, "checkpointed")
    t = cls(
        model=tiny(),
        args=args(tmp_path),
        train_dataset=rows(4, seed=1),
        data_collator=collate,
        harmful_dataset=rows(4, seed=2),
    )
    assert (t.checkpointing.taken, t.loss_path.recomputed) == ("on", True)


def test_a_folder_without_a_reference_trainer_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "not-a-paper"
    empty.mkdir()

    code = main(["bench", "--smoke", "--reference", str(empty), "--output", str(tmp_path / "b.md")])

    assert code == 2
    assert "not-a-paper: no trainer.py" in capsys.readouterr().err


def test_rounds_alternate_who_goes_first_within_each_group():
    order = alternating_groups(2)
    steps = ["sft/reference", "sft", "booster/reference", "booster"]

    assert order(0, steps) == ["sft/reference", "sft", "booster/reference", "booster"]
    assert order(1, steps) == ["sft", "sft/reference", "booster", "booster/reference"]
    assert order(2, steps) == order(0, steps)


REFS = Path(os.environ.get("SAFEFT_REFS", "/work/refs"))
BOOSTER, TVACCINE = REFS / "git-disl+Booster", REFS / "Lslland+T-Vaccine"


@pytest.mark.skipif(
    not (BOOSTER / "trainer.py").is_file() or not (TVACCINE / "trainer.py").is_file(),
    reason="the reference checkouts are not here (set SAFEFT_REFS to their folder)",
)
def test_the_real_reference_checkouts_step_beside_safeft(tmp_path):
    found = find_reference_trainers([BOOSTER, TVACCINE])
    assert {m: f.spec.class_name for m, f in found.items()} == {
        "vaccine": "BaseTrainer",
        "booster": "BoosterAlignmentTrainer",
        "repnoise": "RepNoiseTrainer",
        "tvaccine": "BaseTrainer",
        "sft": "Trainer",
    }
    assert found["tvaccine"].checkout == TVACCINE.resolve()

    out = tmp_path / "b.md"
    refs = f"{BOOSTER},{TVACCINE}"
    args = ["bench", "--smoke", "--reference", refs, "--methods", "booster,tvaccine,repnoise", "--reps", "1"]
    assert main([*args, "--output", str(out)]) == 0

    data = json.loads(out.with_suffix(".reference.json").read_text())
    rows = data["reference"]["fp32"]
    assert list(rows) == ["booster", "tvaccine", "repnoise"]
    assert data["reference_sources"]["repnoise"].endswith("trainer.py RepNoiseTrainer")
    assert "| repnoise (fp32) | git-disl+Booster@" in out.read_text()
    for pair in rows.values():
        assert pair["safeft"]["time_ratio"] > 0 and pair["reference"]["memory"]["peak_bytes"] > 0
