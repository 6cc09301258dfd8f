"""The methods: one explicit name -> MethodSpec map, the only place a method is registered.

Everything else derives from a method's entry here and the properties its classes declare: the
choices and the `--methods.<name>.<field>` options of `safeft align` / `safeft finetune`, the
`methods:` section of their YAML files, the experiment grid, `safeft bench`'s table, which data a
stage loads for it (`needs_harmful`, `needs_alignment`) and how the attack continues after it.

To add a defense: a module here with its `Config` subclass and its `AlignmentTrainer` subclass
(class docstring opening with "What changes compared with SFT" and the paper), one entry in
`METHODS`, tests in tests/test_methods_<name>.py and a section in docs/methods.md (CONTRIBUTING.md).
A defense kept outside this repository registers the same `MethodSpec` under the entry-point group
`safeft.methods` of its own package (`[project.entry-points."safeft.methods"] name = "module:SPEC"`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points

from safeft.config import Config
from safeft.errors import SafeftError, unknown_name
from safeft.methods.base import AlignmentTrainer
from safeft.methods.booster import BoosterConfig, BoosterTrainer, BoosterVaccineConfig, BoosterVaccineTrainer
from safeft.methods.lisa import LisaConfig, LisaTrainer
from safeft.methods.panacea import PanaceaConfig, PanaceaTrainer
from safeft.methods.repnoise import RepNoiseConfig, RepNoiseTrainer
from safeft.methods.sft import SFTConfig, SFTTrainer
from safeft.methods.tar import TARConfig, TARTrainer
from safeft.methods.tvaccine import TVaccineConfig, TVaccineTrainer
from safeft.methods.vaccine import VaccineConfig, VaccineTrainer

log = logging.getLogger("safeft")

STAGES = ("align", "finetune", "both")
ADAPTER_MODES = ("new", "continue")
ENTRY_POINT_GROUP = "safeft.methods"


@dataclass(frozen=True)
class MethodSpec:
    """What the stages, the experiment grid and the benchmark need to know about a method."""

    config_cls: type[Config]
    trainer_cls: type[AlignmentTrainer]
    # "align": an alignment-stage defense; "finetune": a fine-tuning-stage defense (it trains on
    # the user's data); "both": usable in either stage (plain SFT, the baseline of both).
    stage: str
    # What the attack trains after this alignment: "new" LoRA on the merged model, or "continue" this adapter.
    finetune_adapter: str
    description: str = ""  # one line: what the method does
    passes: str = ""  # the work of one optimizer step, for the benchmark's table

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise SafeftError(f"MethodSpec.stage: got {self.stage!r}, expected one of {', '.join(STAGES)}")
        if self.finetune_adapter not in ADAPTER_MODES:
            raise SafeftError(
                f"MethodSpec.finetune_adapter: got {self.finetune_adapter!r}, expected one of {', '.join(ADAPTER_MODES)}"
            )

    def runs_in(self, stage: str) -> bool:
        """Whether `safeft <stage> --method NAME` accepts this method."""
        return self.stage in (stage, "both")

    @property
    def needs_harmful(self) -> bool:
        """The trainer needs `harmful_dataset`: the align stage loads `--harmful-data` for it."""
        return self.trainer_cls.needs_harmful

    @property
    def needs_alignment(self) -> bool:
        """The trainer needs `alignment_dataset`: the finetune stage loads `--alignment-data` for it."""
        return self.trainer_cls.needs_alignment


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec(
        SFTConfig, SFTTrainer, "both", "new", "plain supervised training (the baseline)", "1 forward/backward"
    ),
    "vaccine": MethodSpec(
        VaccineConfig, VaccineTrainer, "align", "new", "perturbation-aware alignment", "2 passes"
    ),
    "tvaccine": MethodSpec(
        TVaccineConfig,
        TVaccineTrainer,
        "align",
        "new",
        "Vaccine on sampled safety-critical blocks",
        "2 passes, undrawn blocks checkpointed if checkpointing is on",
    ),
    "booster": MethodSpec(
        BoosterConfig,
        BoosterTrainer,
        "align",
        "continue",
        "attenuate a simulated harmful step",
        "3 passes",
    ),
    "booster-vaccine": MethodSpec(
        BoosterVaccineConfig,
        BoosterVaccineTrainer,
        "align",
        "continue",
        "Booster with Vaccine's alignment gradient",
        "4 passes",
    ),
    "repnoise": MethodSpec(
        RepNoiseConfig,
        RepNoiseTrainer,
        "align",
        "new",
        "harmful representations -> noise, harmful-loss ascent",
        "1 backward of 2 forwards",
    ),
    "tar": MethodSpec(
        TARConfig,
        TARTrainer,
        "align",
        "new",
        "meta-learn resistance to simulated fine-tuning attacks",
        "K attack steps + K/tamper_every tamper-resistance passes + a retain pass",
    ),
    "lisa": MethodSpec(
        LisaConfig,
        LisaTrainer,
        "finetune",
        "new",
        "fine-tuning-stage defense: alternate with alignment data",
        "1 pass + proximal term",
    ),
    "panacea": MethodSpec(
        PanaceaConfig,
        PanaceaTrainer,
        "finetune",
        "new",
        "fine-tuning-stage defense: learn a perturbation that raises the harmful loss, add it after",
        "3 passes",
    ),
}


def _register_plugins() -> None:
    """Methods that other installed packages declare under the `safeft.methods` entry-point group."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in METHODS:
            log.warning("method %r of %s is already registered; ignoring the plugin's", ep.name, ep.value)
            continue
        spec = ep.load()
        if not isinstance(spec, MethodSpec):
            raise SafeftError(
                f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}): got a {type(spec).__name__}, expected a safeft.methods.MethodSpec"
            )
        METHODS[ep.name] = spec


def method_names(stage: str) -> tuple[str, ...]:
    """The methods `safeft <stage>` accepts, in registration order."""
    return tuple(name for name, spec in METHODS.items() if spec.runs_in(stage))


def get_method(name: str) -> MethodSpec:
    """The spec of a method by name; unknown names get 'did you mean' suggestions."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


_register_plugins()

__all__ = ["METHODS", "MethodSpec", "get_method", "method_names", "AlignmentTrainer"]
