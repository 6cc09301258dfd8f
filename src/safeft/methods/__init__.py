"""The methods: one explicit name -> (config, trainer) map.

To add a defense: a module here with its `Config` subclass and its `AlignmentTrainer` subclass
(class docstring opening with "What changes compared with SFT" and the paper), one entry in
`METHODS`, tests in tests/test_methods_<name>.py, and a section in docs.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeft.config import Config
from safeft.errors import unknown_name
from safeft.methods.base import AlignmentTrainer
from safeft.methods.booster import BoosterConfig, BoosterTrainer, BoosterVaccineConfig, BoosterVaccineTrainer
from safeft.methods.lisa import LisaConfig, LisaTrainer
from safeft.methods.panacea import PanaceaConfig, PanaceaTrainer
from safeft.methods.repnoise import RepNoiseConfig, RepNoiseTrainer
from safeft.methods.sft import SFTConfig, SFTTrainer
from safeft.methods.tar import TARConfig, TARTrainer
from safeft.methods.tvaccine import TVaccineConfig, TVaccineTrainer
from safeft.methods.vaccine import VaccineConfig, VaccineTrainer


@dataclass(frozen=True)
class MethodSpec:
    """What the stages need to know about a method."""

    config_cls: type[Config]
    trainer_cls: type[AlignmentTrainer]
    stage: str  # "align": an alignment-stage defense; "finetune": a fine-tuning-stage defense
    finetune_adapter: str  # what the attack trains after this alignment: "new" LoRA on the merged model, or "continue" this adapter
    description: str = ""

    @property
    def needs_harmful(self) -> bool:
        """The trainer needs `harmful_dataset`."""
        return self.trainer_cls.needs_harmful

    @property
    def needs_alignment(self) -> bool:
        """The trainer needs `alignment_dataset`."""
        return self.trainer_cls.needs_alignment


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec(SFTConfig, SFTTrainer, "align", "new", "plain supervised alignment (baseline)"),
    "vaccine": MethodSpec(
        VaccineConfig, VaccineTrainer, "align", "new", "perturbation-aware alignment (2 passes/step)"
    ),
    "tvaccine": MethodSpec(
        TVaccineConfig, TVaccineTrainer, "align", "new", "Vaccine on sampled safety-critical blocks"
    ),
    "booster": MethodSpec(
        BoosterConfig,
        BoosterTrainer,
        "align",
        "continue",
        "attenuate a simulated harmful step (3 passes/step)",
    ),
    "booster-vaccine": MethodSpec(
        BoosterVaccineConfig,
        BoosterVaccineTrainer,
        "align",
        "continue",
        "Booster with Vaccine's alignment gradient",
    ),
    "repnoise": MethodSpec(
        RepNoiseConfig,
        RepNoiseTrainer,
        "align",
        "new",
        "harmful representations -> noise, harmful-loss ascent",
    ),
    "tar": MethodSpec(
        TARConfig,
        TARTrainer,
        "align",
        "new",
        "meta-learn resistance to simulated fine-tuning attacks (K attack steps per step)",
    ),
    "lisa": MethodSpec(
        LisaConfig, LisaTrainer, "finetune", "new", "fine-tuning-stage defense: alternate with alignment data"
    ),
    "panacea": MethodSpec(
        PanaceaConfig,
        PanaceaTrainer,
        "finetune",
        "new",
        "fine-tuning-stage defense: learn a perturbation that raises the harmful loss, add it after (3 passes/step)",
    ),
}


def get_method(name: str) -> MethodSpec:
    """The spec of a method by name; unknown names get 'did you mean' suggestions."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


__all__ = ["METHODS", "MethodSpec", "get_method", "AlignmentTrainer"]
