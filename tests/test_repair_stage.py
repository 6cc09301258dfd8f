"""`safeft repair` end to end on tiny models: align -> finetune -> repair, checked from the saved tensors.

Expectations come from the adapters on disk: the alignment changed each adapted weight by
V = (alpha / r) B_align A_align, so SafeLoRA's new B must be (V Vᵀ / ‖V‖_F) B for the projected layers
and the old B elsewhere, with every A untouched; Antidote must zero exactly its count in each row of
each LoRA matrix and leave every other entry as it was. Evaluation must see base + alignment delta +
repaired delta.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safeft.cli import main
from safeft.errors import SafeftError
from safeft.io import read_json
from safeft.models import load_weights_chain
from safeft.pipeline.demo_data import write_demo_data
from safeft.stages.align import AlignConfig, run_align
from safeft.stages.finetune import FinetuneConfig, run_finetune
from safeft.stages.repair import RepairConfig, run_repair


def _align_and_attack(root: Path, model: str, data: dict[str, str], bare: bool = False) -> tuple[Path, Path]:
    align = root / f"align-{model}"
    if not bare:
        run_align(
            AlignConfig.from_dict(
                {
                    "output": str(align),
                    "method": "sft",
                    "model": model,
                    "alignment_data": data["refusals"],
                    "alignment_samples": 16,
                    "max_length": 32,
                    "train": {"max_steps": 3, "batch_size": 8, "learning_rate": 5e-2, "progress": False},
                }  # fmt: skip
            )
        )
    attack = root / f"attack-{model}{'-bare' if bare else ''}"
    source = {"model": model} if bare else {"from_run": str(align)}
    run_finetune(
        FinetuneConfig.from_dict(
            {
                "output": str(attack),
                **source,
                "task": "sst2",
                "task_data": data["sst2_train"],
                "harmful_data": data["attack"],
                "eval_prompts": data["eval_prompts"],
                "samples": 16,
                "poison_ratio": 0.25,
                "adapter": "new",
                "max_length": 32,
                "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-2, "progress": False},
            }  # fmt: skip
        )
    )
    return align, attack


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("repair")
    data = write_demo_data(
        root / "data", n_refusals=16, n_pool=12, n_attack=8, n_eval=8, n_task=24, n_task_eval=8
    )
    llama = _align_and_attack(root, "tiny-random-llama", data)
    gpt2 = _align_and_attack(root, "tiny-random-gpt2", data)
    return {"root": root, "data": data, "llama": llama, "gpt2": gpt2}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _scale(run: Path) -> float:
    config = read_json(run / "adapter" / "adapter_config.json")
    return config["lora_alpha"] / config["r"]


def _repair(runs, arch: str, method: str, **options) -> Path:
    _, attack = runs[arch]
    out = runs["root"] / "-".join(
        ["repair", arch, method, *(f"{k}{v}" for k, v in options.items() if k != "calibration_data")]
    )
    run_repair(
        RepairConfig.from_dict(
            {
                "output": str(out),
                "run": str(attack),
                "method": method,
                "max_length": 32,
                "methods": {method: options},
                "data_dir": None,
            }
        )
    )
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_safelora_projects_b_of_the_least_aligned_layers_onto_the_alignment_change(runs, arch):
    align, attack = runs[arch]
    out = _repair(runs, arch, "safelora", num_proj_layers=3)
    before, after, aligned = _adapter(attack), _adapter(out), _adapter(align)
    metrics = read_json(out / "metrics.json")
    assert metrics["n_projected"] == 3 and metrics["layers"] == len([k for k in before if "lora_B" in k])
    projected = set(metrics["projected_layers"])
    for key in before:
        if "lora_A" in key:
            assert torch.equal(after[key], before[key])  # A never changes
            continue
        layer = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
        a_key = key.replace("lora_B", "lora_A")
        v = _scale(align) * aligned[key] @ aligned[a_key]  # the alignment's change of this weight, (out, in)
        c = v @ v.T / torch.linalg.matrix_norm(v)
        expected = c @ before[key] if layer in projected else before[key]
        torch.testing.assert_close(after[key], expected, atol=1e-6, rtol=1e-5)
    # the 3 projected layers are the 3 lowest cosines
    cosines = metrics["cosines"]
    assert sorted(projected) == sorted(sorted(cosines, key=cosines.get)[:3])


def test_antidote_zeroes_its_count_in_each_row_and_nothing_else(runs):
    out = _repair(
        runs, "llama", "antidote", calibration_data=runs["data"]["harmful_pool"], calibration_samples=12
    )
    _, attack = runs["llama"]
    before, after = _adapter(attack), _adapter(out)
    for key, old in before.items():
        new = after[key]
        changed = new != old
        cols = old.shape[1]
        expected_per_row = cols - int(cols * (1 - 0.1))
        assert changed.sum(dim=1).tolist() == [expected_per_row] * old.shape[0], key
        assert not new[changed].any()  # changed means zeroed
    metrics = read_json(out / "metrics.json")
    assert metrics["calibration_rows"] == 12
    assert metrics["zeroed_weights"] == sum(
        (t.shape[1] - int(t.shape[1] * 0.9)) * t.shape[0] for t in before.values()
    )


def test_the_repaired_run_is_evaluated_with_the_repaired_adapter(runs):
    align, attack = runs["llama"]
    out = _repair(runs, "llama", "safelora")
    manifest = read_json(out / "manifest.json")
    assert manifest["stage"] == "repair" and manifest["parent"] == str(attack.resolve())
    assert [Path(w["path"]) for w in manifest["weights"]] == [
        (align / "adapter").resolve(),
        (out / "adapter").resolve(),
    ]
    model, _ = load_weights_chain(manifest["base_model"], manifest["weights"], merge_last=True)
    base, _ = load_weights_chain(manifest["base_model"], [])
    name = "model.layers.2.self_attn.q_proj"
    prefix = f"base_model.model.{name}"

    def delta(run: Path) -> torch.Tensor:
        t = _adapter(run)
        return _scale(run) * t[f"{prefix}.lora_B.weight"] @ t[f"{prefix}.lora_A.weight"]

    expected = dict(base.named_parameters())[f"{name}.weight"] + delta(align) + delta(out)
    torch.testing.assert_close(
        dict(model.named_parameters())[f"{name}.weight"], expected, atol=1e-6, rtol=1e-5
    )


def test_a_finished_repair_is_reused(runs):
    out = _repair(runs, "llama", "safelora", num_proj_layers=3)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    _repair(runs, "llama", "safelora", num_proj_layers=3)
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_safelora_on_a_bare_model_attack_asks_for_the_two_models(runs):
    _, attack = _align_and_attack(runs["root"], "tiny-random-llama", runs["data"], bare=True)
    out = runs["root"] / "repair-bare"
    with pytest.raises(SafeftError, match="aligned-model"):
        run_repair(RepairConfig.from_dict({"output": str(out), "run": str(attack), "method": "safelora"}))
    assert not out.exists()  # bad input leaves no half-made run directory


def test_cli_round_trip(runs, capsys):
    _, attack = runs["llama"]
    out = runs["root"] / "repair-cli"
    code = main(["repair", "--run", str(attack), "--output", str(out), "--method", "safelora",
                 "--methods.safelora.select", "threshold", "--methods.safelora.threshold", "1.0"])  # fmt: skip
    assert code == 0 and "repair run:" in capsys.readouterr().out
    assert read_json(out / "metrics.json")["n_projected"] == read_json(out / "metrics.json")["layers"]
    assert main(["repair", "--run", str(out / "missing"), "--output", str(out) + "-x"]) == 2
