"""Which way the loss runs the output layer: the user's choice, or the one with less work within the budget."""

from __future__ import annotations

import logging

import pytest
import torch

from _methods_support import collate, rows, tiny, trainer
from safeft.io import read_json
from safeft.methods.loss import LossPath, choose_loss_path, response_fraction

VOCAB, WIDTH = 1000, 8


def _head() -> torch.nn.Module:
    return torch.nn.Linear(WIDTH, VOCAB, bias=False)


def _rows(prompt: int, response: int, n: int = 4) -> list[dict[str, list[int]]]:
    return [
        {"input_ids": [5] * (prompt + response), "labels": [-100] * prompt + [5] * response} for _ in range(n)
    ]


def test_response_fraction_counts_the_positions_whose_next_token_is_trained():
    # 10 positions per row; labels on the last 6, the first of which is the target of position 3:
    # after the causal shift, positions 3..8 predict a labelled token -> 6 of 10.
    assert response_fraction(_rows(4, 6)) == (0.6, 10)
    assert response_fraction(_rows(0, 10)) == (0.9, 10)  # the first label is never a target


def test_auto_takes_the_deferred_layer_when_response_tokens_are_fewer_than_two_thirds():
    # deferred: 3 output-layer rows per response token; full logits: 2 per position
    choice = choose_loss_path(LossPath(), _head(), _rows(6, 4), batch_size=8)  # 4 of 10 positions
    assert (choice.taken, choice.chunk_tokens) == ("deferred", 32 * 2**20 // (4 * VOCAB))
    assert "40%" in choice.reason and "0.60x" in choice.reason


def test_auto_takes_the_full_logits_when_most_positions_are_responses_and_memory_allows():
    choice = choose_loss_path(LossPath(), _head(), _rows(1, 19), batch_size=8)  # 18 of 20 positions
    assert (choice.taken, choice.chunk_tokens) == ("full", None)
    assert "faster" in choice.reason


def test_a_memory_budget_below_the_full_logits_keeps_the_deferred_layer():
    # full logits of one micro-batch: 8 rows x 20 positions x 1000 logits x 8 bytes = 1.22 MiB
    tight = choose_loss_path(LossPath(memory_budget_mib=1.0), _head(), _rows(1, 19), batch_size=8)
    roomy = choose_loss_path(LossPath(memory_budget_mib=1.5), _head(), _rows(1, 19), batch_size=8)
    assert tight.taken == "deferred" and "exceed memory_budget_mib 1" in tight.reason
    assert roomy.taken == "full"


def test_the_users_choice_and_the_models_limits_win_over_the_rule():
    mostly_responses, mostly_prompts = _rows(1, 19), _rows(15, 5)
    assert choose_loss_path(LossPath("deferred"), _head(), mostly_responses, 8).taken == "deferred"
    assert choose_loss_path(LossPath("full"), _head(), mostly_prompts, 8).taken == "full"
    assert choose_loss_path(LossPath("deferred", chunk_tokens=7), _head(), None, 8).chunk_tokens == 7
    # a model whose logits are not its output layer's (head None) always uses its logits
    assert choose_loss_path(LossPath("deferred"), None, mostly_prompts, 8).taken == "full"
    # unknown rows (a streamed dataset): the path that never needs more than a chunk
    assert choose_loss_path(LossPath(), _head(), None, 8).taken == "deferred"


def test_without_recomputation_auto_takes_the_deferred_layer_even_when_most_positions_are_responses():
    mostly_responses = _rows(1, 19)  # 18 of 20 positions: with recomputation the full logits are less work
    assert choose_loss_path(LossPath(), _head(), mostly_responses, 8).taken == "full"
    choice = choose_loss_path(LossPath(), _head(), mostly_responses, 8, recompute=False)
    assert (choice.taken, choice.recomputed) == ("deferred", False)
    assert choose_loss_path(LossPath("full"), _head(), mostly_responses, 8, recompute=False).taken == "full"


def test_the_trainer_recomputes_the_deferred_chunks_only_with_checkpointing_on(tmp_path):
    fast = trainer("sft", tiny(), tmp_path / "a")  # auto, no memory budget
    small = trainer("sft", tiny(), tmp_path / "b", loss_path=LossPath(memory_budget_mib=1e6))
    assert (fast.checkpointing.taken, fast.loss_path.taken, fast.loss_path.recomputed) == (
        "off",
        "deferred",
        False,
    )
    assert (small.checkpointing.taken, small.loss_path.recomputed) == ("on", True)


@pytest.mark.parametrize("path", ["full", "deferred"])
def test_the_trainer_computes_the_loss_the_chosen_way(path, tmp_path):
    model = tiny()
    t = trainer("sft", model, tmp_path, loss_path=LossPath(path))
    loss, outputs = t.lm_loss(model, collate(rows(4, seed=3)))
    assert t.loss_path.taken == path
    assert (outputs.logits.numel() > 0) == (path == "full")  # the full logits exist only on that path
    assert torch.isfinite(loss)


def _tiny_align_config(tmp_path, method: str, train: dict) -> dict:
    """A one-step alignment of the tiny random Llama on demo data, as `AlignConfig.from_dict` takes it."""
    from safeft.pipeline.demo_data import write_demo_data

    data = write_demo_data(
        tmp_path / "data", n_refusals=8, n_pool=4, n_attack=4, n_eval=4, n_task=4, n_task_eval=4
    )
    harmful = {"harmful_data": data["harmful_pool"], "harmful_samples": 4} if method != "sft" else {}
    return {
        "output": str(tmp_path / "align"),
        "method": method,
        "model": "tiny-random-llama",
        "alignment_data": data["refusals"],
        **harmful,
        "alignment_samples": 8,
        "max_length": 32,
        "train": {"max_steps": 1, "batch_size": 4, "progress": False, **train},
    }


def test_the_run_says_which_path_it_took(tmp_path, caplog):
    from safeft.stages.align import AlignConfig, run_align

    config = _tiny_align_config(tmp_path, "sft", {"output_layer": "full"})
    out = tmp_path / "align"
    with caplog.at_level(logging.INFO, logger="safeft"):
        run_align(AlignConfig.from_dict(config))

    taken = read_json(out / "manifest.json")["loss_path"]
    assert (taken["taken"], taken["requested"]) == ("full", "full")
    assert read_json(out / "metrics.json")["loss_path"] == taken
    assert "loss: full output layer (requested)" in caplog.text


def test_a_tvaccine_run_says_whether_it_checkpointed_its_undrawn_blocks(tmp_path, caplog):
    from safeft.stages.align import AlignConfig, run_align

    config = _tiny_align_config(tmp_path, "tvaccine", {"checkpointing": "on"})
    out = tmp_path / "align"
    with caplog.at_level(logging.INFO, logger="safeft"):
        run_align(AlignConfig.from_dict(config))

    taken = read_json(out / "manifest.json")["checkpointing"]
    assert (taken["taken"], taken["requested"]) == ("on", "on")
    assert read_json(out / "metrics.json")["checkpointing"] == taken
    assert "checkpointing: on (requested)" in caplog.text
    # It says how the step ran, not what it computed: the run's name (fingerprint) does not change.
    from safeft.stages.runs import config_fingerprint

    auto = AlignConfig.from_dict({**config, "train": {**config["train"], "checkpointing": "auto"}})
    assert config_fingerprint(AlignConfig.from_dict(config)) == config_fingerprint(auto)
