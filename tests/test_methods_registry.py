"""The method registry, the hooks that find decoder blocks, and a short training run of every method."""

from __future__ import annotations

import pytest
import torch

from _methods_support import tiny, trainer
from safeft.errors import ConfigError, SafeftError
from safeft.methods import METHODS, MethodSpec, get_method, method_names
from safeft.methods.booster import BoosterConfig
from safeft.methods.hooks import (
    add_to_outputs,
    capture_output_grads,
    checkpointed,
    find_decoder_blocks,
    hook_points,
)
from safeft.methods.vaccine import VaccineConfig


def test_registry_declares_the_papers_protocol_for_each_defense():
    # The attack continues Booster's adapter and trains a fresh one on every other alignment (the papers' protocol).
    assert METHODS["booster"].finetune_adapter == METHODS["booster-vaccine"].finetune_adapter == "continue"
    assert {METHODS[n].finetune_adapter for n in ("sft", "vaccine", "tvaccine", "repnoise")} == {"new"}
    # Lisa defends during fine-tuning, with alignment rows; SFT is the baseline of both stages.
    assert method_names("finetune")[:1] == ("sft",) and "lisa" in method_names("finetune")
    assert "lisa" not in method_names("align") and "sft" in method_names("align")
    assert METHODS["lisa"].needs_alignment and not METHODS["lisa"].needs_harmful
    # Panacea defends during fine-tuning against the provider's harmful rows (the finetune stage loads them).
    assert "panacea" in method_names("finetune") and "panacea" not in method_names("align")
    assert METHODS["panacea"].needs_harmful and METHODS["panacea"].finetune_adapter == "new"
    # The defenses that train against harmful rows declare it, so the align stage loads them.
    assert all(
        METHODS[n].needs_harmful for n in ("tvaccine", "booster", "booster-vaccine", "repnoise", "tar")
    )
    assert "tar" in method_names("align") and METHODS["tar"].finetune_adapter == "new"
    assert not METHODS["sft"].needs_harmful and not METHODS["vaccine"].needs_harmful


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_is_complete(name):
    spec = METHODS[name]
    assert spec.trainer_cls.config_cls is spec.config_cls
    assert spec.description and spec.passes  # the bench table and the docs read them
    assert (spec.trainer_cls.__doc__ or "").startswith("What changes compared with SFT")


def test_a_spec_with_an_unknown_stage_is_refused():
    with pytest.raises(SafeftError, match="stage: got 'attack'"):
        MethodSpec(BoosterConfig, METHODS["booster"].trainer_cls, "attack", "new")


def test_unknown_method_suggests_the_close_name():
    with pytest.raises(SafeftError, match="did you mean 'booster'"):
        get_method("boster")


def test_configs_name_the_paper_symbol_and_validate():
    assert BoosterConfig().harmful_weight == 5.0 and BoosterConfig().simulated_step_size == 0.1
    with pytest.raises(ConfigError, match="hook_point"):
        VaccineConfig.from_dict({"hook_point": "mlp"})
    with pytest.raises(ConfigError, match="harmful_weight: got -1"):
        BoosterConfig.from_dict({"harmful_weight": -1})


@pytest.mark.parametrize(
    ("name", "attention"),
    [("tiny-random-llama", "self_attn"), ("tiny-random-qwen2", "self_attn"), ("tiny-random-gpt2", "attn")],
)
def test_decoder_blocks_and_attention_found_generically_through_peft(name, attention):
    model = tiny(name)
    blocks = find_decoder_blocks(model)
    assert len(blocks) == 4
    points = hook_points(model, "attention")
    assert [p is getattr(b, attention) for p, b in zip(points, blocks, strict=True)] == [True] * 4
    assert hook_points(model, "block") == list(blocks)


def test_hooks_are_removed_even_when_the_step_raises():
    model = tiny()
    points = hook_points(model)
    with (
        pytest.raises(RuntimeError),
        add_to_outputs(points, [torch.ones(1)] * 4),
        capture_output_grads(points),
    ):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), checkpointed(list(find_decoder_blocks(model))):
        raise RuntimeError("boom")
    assert all(not p._forward_hooks for p in points)
    assert all("forward" not in vars(b) for b in find_decoder_blocks(model))


def test_perturbation_hook_changes_only_the_hidden_state_of_a_tuple_output():
    model = tiny()
    attn = hook_points(model)[0]
    seen = []
    attn.register_forward_hook(lambda m, a, out: seen.append(out))
    ids = torch.tensor([[1000, 1001, 1002]])
    with torch.no_grad():
        model(input_ids=ids)
        with add_to_outputs([attn], [torch.full((1, 3, 32), 0.5)]):
            model(input_ids=ids)
    # Hooks run in registration order: the observer sees the unperturbed output both times, and the
    # model output changed, so the perturbation went downstream via element 0 only.
    assert isinstance(seen[0], tuple) and len(seen[0]) == len(seen[1])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["tiny-random-llama", "tiny-random-gpt2"])
def test_every_method_trains_three_steps_and_moves_every_trainable_parameter(method, arch, tmp_path):
    model = tiny(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    t = trainer(method, model, tmp_path)
    t.train()
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == trainable  # every trainable tensor moved, no frozen one did
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # flags restored


def test_full_parameter_training_moves_every_weight(tmp_path):
    model = tiny(full=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer("booster", model, tmp_path).train()
    assert all(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


def test_methods_with_extra_data_refuse_to_start_without_it(tmp_path):
    from _methods_support import args, collate, rows

    with pytest.raises(SafeftError, match="harmful_dataset"):
        get_method("booster").trainer_cls(
            model=tiny(), args=args(tmp_path), train_dataset=rows(4, 1), data_collator=collate
        )
