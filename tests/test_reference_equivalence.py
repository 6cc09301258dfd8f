"""Each method computes what its paper's own code computes.

The golden LoRA tensors under tests/fixtures/reference/ were produced by the reference trainer
classes themselves (git-disl/Booster, Lslland/T-Vaccine, git-disl/Vaccine, git-disl/Lisa, imported
unchanged; see scripts/reference_golden.py and each fixture's "provenance"). Here safeft's trainer
runs from the same initial weights on the same batches for the same k optimizer steps, and its LoRA
tensors must match. Regenerate the fixtures with

    python scripts/reference_golden.py --refs /path/to/folder/of/checkouts
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import safeft.methods.tvaccine as tvaccine
from _reference_support import (
    CASES,
    Case,
    Feed,
    ReseedEachStep,
    build_model,
    collate,
    fixture_paths,
    load_fixture,
    lora_tensors,
    sequential,
    training_arguments,
    weights_digest,
)
from safeft.methods import get_method

# Largest |safeft - reference| allowed, relative to the largest change the reference made to any LoRA
# tensor in its k steps (so a bound of 1e-5 means "equal to 5 significant digits of the update").
TOLERANCE = {
    # Same arithmetic in the same order as the reference: bit-identical.
    "sft": 0.0,
    "vaccine": 0.0,
    "tvaccine_4blocks": 0.0,
    "tvaccine_28blocks": 0.0,
    "repnoise": 0.0,
    "lisa": 0.0,
    # Booster rounds differently in three places (Booster trainer.py:300, :319, :350 and :375): the simulated
    # step w - (α g_h)/||g_h|| (safeft: w - g_h · (α/||g_h||)), the restore by adding that step back
    # (safeft copies w back: exact), and g_a + λ g_h - λ g_h' (safeft: g_a + λ (g_h - g_h')). Done in
    # the reference's order, safeft's tensors are bit-identical (checked by hand); as written they
    # differ by 4.3e-6 (Booster) and 4.7e-6 (Booster+Vaccine) of the update after 3 steps. A 0.1%
    # error in Vaccine's ρ moves Booster+Vaccine by 5e-4 of the update, far above this bound.
    "booster": 2e-5,
    "booster_vaccine": 2e-5,
}


def run_safeft(case: Case, golden: dict[str, Any], output_dir: Any, monkeypatch: Any) -> Any:
    """safeft's trainer for `case.method`, from the fixture's start, on the fixture's batches."""
    spec = get_method(case.method)
    model = build_model(case.blocks)
    assert weights_digest(model) == golden["initial_weights_sha256"], (
        "the tiny model built from the seed is not the one the golden tensors started from "
        "(torch/transformers/peft changed its initialisation?): regenerate the fixtures with "
        "scripts/reference_golden.py"
    )
    feeds = {which: Feed(which, batches) for which, batches in golden["feeds"].items()}
    extra_rows = [row for batches in golden["feeds"].values() for batch in batches for row in batch]
    trainer = sequential(spec.trainer_cls)(
        model=model,
        args=training_arguments(case, output_dir),
        train_dataset=golden["train_rows"],
        data_collator=collate,
        method_config=spec.config_cls(**case.safeft_config),
        harmful_dataset=extra_rows or None,
        alignment_dataset=extra_rows or None,
        callbacks=[ReseedEachStep()],
    )

    def fed_batch(which: str, batch_size: int) -> dict[str, torch.Tensor]:
        batch = next(feeds[which])
        assert len(batch["input_ids"]) == batch_size, f"{which}: the method asked for {batch_size} rows"
        return trainer._prepare_inputs(batch)

    monkeypatch.setattr(trainer, "next_batch", fed_batch)
    trainer.train()
    for feed in feeds.values():
        assert feed.used == len(feed.batches), f"safeft used {feed.used} of the {feed.name} batches"
    return model


def replay_reference_draws(golden: dict[str, Any], monkeypatch: Any) -> list[torch.Tensor]:
    """T-Vaccine: safeft draws the blocks the reference drew (its generator is numpy's, ours torch's).

    Returns the sampling probabilities safeft passed to each draw, for comparison with the reference's.
    """
    recorded = iter(golden["draws"])
    seen: list[torch.Tensor] = []

    def draw(q: torch.Tensor, count: int, seed: int, step: int) -> list[int]:
        reference = next(recorded)
        assert step == reference["step"], f"safeft draws at step {step}, the reference at {reference['step']}"
        assert count == len(reference["blocks"])
        seen.append(q.detach().double().clone())
        return sorted(reference["blocks"])

    monkeypatch.setattr(tvaccine, "draw_blocks", draw)
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_lora_after_k_steps_matches_the_reference_trainer(name, tmp_path, monkeypatch):
    case = CASES[name]
    if not fixture_paths(name)[0].is_file():
        pytest.fail(f"missing fixture {fixture_paths(name)[0]}: run scripts/reference_golden.py")
    golden, reference = load_fixture(name)
    probabilities = replay_reference_draws(golden, monkeypatch) if case.method == "tvaccine" else []

    ours = lora_tensors(run_safeft(case, golden, tmp_path, monkeypatch))
    initial = lora_tensors(build_model(case.blocks))

    assert ours.keys() == reference.keys()
    update = max((reference[n] - initial[n]).abs().max().item() for n in reference)
    assert update > 1e-3, "the reference barely moved the LoRA tensors: the comparison would be vacuous"
    worst = max((ours[n] - reference[n]).abs().max().item() for n in reference)
    assert worst <= TOLERANCE[name] * update, (
        f"{name}: max |safeft - reference| = {worst:.3g} after {case.steps} steps "
        f"(the reference's update is {update:.3g}; allowed {TOLERANCE[name]:g} of it)"
    )
    if case.method == "tvaccine":
        assert len(probabilities) == len(golden["draws"]), "safeft drew blocks a different number of times"
        for q, draw in zip(probabilities, golden["draws"], strict=True):
            torch.testing.assert_close(
                q, torch.tensor(draw["probabilities"], dtype=torch.float64), rtol=1e-6, atol=1e-9
            )


def test_tvaccine_28_blocks_exercises_the_previous_block_rule():
    """The deep case draws blocks whose predecessor is not drawn (else it could not tell the rules apart)."""
    golden, _ = load_fixture("tvaccine_28blocks")
    assert any(b > 0 and b - 1 not in d["blocks"] for d in golden["draws"] for b in d["blocks"])


def test_repnoise_rows_are_paired_and_hold_ids_bfloat16_would_round():
    """RepNoise's fixture can tell the reference's label-rounding bug from exact labels, on paired rows."""
    golden, _ = load_fixture("repnoise")
    ids = torch.tensor([t for batch in golden["feeds"]["harmful"] for row in batch for t in row["input_ids"]])
    assert (ids.to(torch.bfloat16).long() != ids).any()
    for b, harmful in enumerate(golden["feeds"]["harmful"]):
        alignment = golden["train_rows"][b * len(harmful) : (b + 1) * len(harmful)]
        for h, a in zip(harmful, alignment, strict=True):
            prompt = [t for t, label in zip(a["input_ids"], a["labels"], strict=True) if label == -100]
            assert h["input_ids"][: len(prompt)] == prompt and h["input_ids"] != a["input_ids"]
