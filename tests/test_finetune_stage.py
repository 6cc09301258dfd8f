"""The attack stage end to end on a tiny model: what each adapter mode trains, and what evaluation then loads.

The expectations are computed by hand from the saved tensors: a LoRA adapter adds (alpha / r) B A
to the weight it adapts, so the evaluated weight must be the base weight plus exactly the deltas of
the adapters the run directory names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safeft.io import read_json
from safeft.models import load_model, load_weights_chain
from safeft.pipeline.demo_data import write_demo_data
from safeft.stages.align import AlignConfig, run_align
from safeft.stages.finetune import FinetuneConfig, run_finetune

MODEL = "tiny-random-llama"
WEIGHT = "model.layers.1.self_attn.q_proj"  # one adapted weight, checked by hand


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """Demo data and one finished 3-step SFT alignment of the tiny model."""
    root = tmp_path_factory.mktemp("attack")
    data = write_demo_data(
        root / "data", n_refusals=24, n_pool=8, n_attack=16, n_eval=8, n_task=40, n_task_eval=8
    )
    align = root / "align"
    run_align(
        AlignConfig.from_dict(
            {
                "output": str(align),
                "method": "sft",
                "model": MODEL,
                "alignment_data": data["refusals"],
                "alignment_samples": 24,
                "max_length": 48,
                "train": {"max_steps": 3, "batch_size": 8, "learning_rate": 5e-2, "progress": False},
            }  # fmt: skip
        )
    )
    return data, align


def _attack(setup, tmp_path: Path, adapter: str, learning_rate: float = 5e-2) -> Path:
    data, align = setup
    out = tmp_path / f"attack-{adapter}"
    run_finetune(
        FinetuneConfig.from_dict(
            {
                "output": str(out),
                "from_run": str(align),
                "task": "sst2",
                "task_data": data["sst2_train"],
                "harmful_data": data["attack"],
                "eval_prompts": data["eval_prompts"],
                "samples": 20,
                "poison_ratio": 0.2,
                "adapter": adapter,
                "max_length": 48,
                "train": {
                    "max_steps": 3,
                    "batch_size": 4,
                    "learning_rate": learning_rate,
                    "warmup_ratio": 0.0,
                    "progress": False,
                },
            }  # fmt: skip
        )
    )
    return out


def _lora_delta(adapter_dir: Path, module: str) -> torch.Tensor:
    """(alpha / r) B A of one module, from the saved adapter file."""
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    config = read_json(adapter_dir / "adapter_config.json")
    a = next(v for k, v in tensors.items() if k.endswith(f"{module}.lora_A.weight"))
    b = next(v for k, v in tensors.items() if k.endswith(f"{module}.lora_B.weight"))
    return (config["lora_alpha"] / config["r"]) * b @ a


def _evaluated_weight(run: Path) -> torch.Tensor:
    """The weight evaluation sees: the run's weights chain, every adapter merged."""
    manifest = read_json(run / "manifest.json")
    model, _ = load_weights_chain(manifest["base_model"], manifest["weights"], merge_last=True)
    return dict(model.named_parameters())[f"{WEIGHT}.weight"].detach()


def _base_weight() -> torch.Tensor:
    model, _ = load_model(MODEL)
    return dict(model.named_parameters())[f"{WEIGHT}.weight"].detach()


def test_new_mode_trains_a_fresh_adapter_on_top_of_the_merged_alignment(setup, tmp_path):
    _, align = setup
    run = _attack(setup, tmp_path, "new")
    manifest = read_json(run / "manifest.json")
    assert manifest["adapter_mode"] == "new"
    assert [Path(w["path"]) for w in manifest["weights"]] == [
        (align / "adapter").resolve(),
        (run / "adapter").resolve(),
    ]
    # The attack adapter names the model's own modules (not those of a model wrapped twice) ...
    attack_keys = set(load_file(run / "adapter" / "adapter_model.safetensors"))
    assert attack_keys == set(load_file(align / "adapter" / "adapter_model.safetensors"))
    # ... so evaluation sees base + alignment delta + attack delta, and the attack delta is not zero.
    expected = _base_weight() + _lora_delta(align / "adapter", WEIGHT) + _lora_delta(run / "adapter", WEIGHT)
    torch.testing.assert_close(_evaluated_weight(run), expected, atol=1e-6, rtol=1e-5)
    assert _lora_delta(run / "adapter", WEIGHT).abs().max() > 1e-4


def test_new_mode_starts_from_zero(setup, tmp_path):
    """A fresh adapter starts at B = 0: with a vanishing learning rate (0 is refused) B stays ~0 and
    the evaluated weights are exactly the aligned model's."""
    _, align = setup
    run = _attack(setup, tmp_path, "new", learning_rate=1e-30)
    b = [v for k, v in load_file(run / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert b and all(t.abs().max() < 1e-25 for t in b)
    torch.testing.assert_close(_evaluated_weight(run), _evaluated_weight(align), atol=0, rtol=0)


def test_continue_mode_keeps_training_the_alignment_adapter(setup, tmp_path):
    _, align = setup
    run = _attack(setup, tmp_path, "continue")
    manifest = read_json(run / "manifest.json")
    assert manifest["adapter_mode"] == "continue"
    assert [Path(w["path"]) for w in manifest["weights"]] == [(run / "adapter").resolve()]  # replaces it
    before = load_file(align / "adapter" / "adapter_model.safetensors")
    after = load_file(run / "adapter" / "adapter_model.safetensors")
    assert set(before) == set(after)
    assert all(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)  # every B trained on
    expected = _base_weight() + _lora_delta(run / "adapter", WEIGHT)
    torch.testing.assert_close(_evaluated_weight(run), expected, atol=1e-6, rtol=1e-5)


def test_panacea_fine_tunes_with_the_defense_harmful_rows_and_releases_the_perturbed_weights(setup, tmp_path):
    data, align = setup
    out = tmp_path / "panacea"
    run_finetune(
        FinetuneConfig.from_dict(
            {
                "output": str(out),
                "from_run": str(align),
                "method": "panacea",
                "task": "sst2",
                "task_data": data["sst2_train"],
                "harmful_data": data["attack"],
                "eval_prompts": data["eval_prompts"],
                "defense_harmful_data": data["harmful_pool"],
                "defense_harmful_samples": 8,
                "samples": 20,
                "poison_ratio": 0.2,
                "max_length": 48,
                "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.0, "progress": False},
            }  # fmt: skip
        )
    )
    logged = [h for h in read_json(out / "metrics.json")["log_history"] if "loss" in h]
    assert all("panacea/harmful_loss" in h for h in logged)
    # learning rate 0: the saved adapter is the fresh one (B = 0) plus ε, which moves every B
    b = [v for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert b and all(t.abs().max() > 0 for t in b)
