"""The papers' reference trainers, imported unchanged from local checkouts, stepped beside safeft's.

`safeft bench --reference PATH[,PATH]` and `scripts/reference_golden.py` both run the reference
repositories' own trainer classes. Nothing of them is copied here: each checkout's `trainer.py`
is imported from its path at run time (`import_reference_trainer`), and this module holds only our
compatibility layer (the references were written for transformers ~4.4x; we run 5.x):

- `training_step` accepts Trainer's `num_items_in_batch` argument and drops it;
- `use_apex` and `do_grad_scaling` are False (attributes Trainer 5 no longer defines);
- `transformers.file_utils.is_torch_tpu_available` (removed in Trainer 5) is a stub returning False;
- T-Vaccine's `activate_layers` batch key is dropped before the model call (only its forked
  modeling files read it, to skip activation checkpointing; on the stock model it does nothing);
- RepNoise (`neutralise_label_rounding`): the reference casts its difference mask to bfloat16 and
  multiplies the labels by it, which rounds token ids to other tokens (and, with SmolLM2's 49,152
  ids, past the vocabulary); its masked loss receives the mask as booleans instead.

For the benchmark, `reference_registry` wraps each reference class so that it is built like a
safeft method (`MethodStep` in `safeft.bench.training`): the reference's hyper-parameters are set on
`TrainingArguments` from the safeft method config (same values on both sides), and its extra
batches (harmful rows) come from the same fixed rows as safeft's, in batches of the same size,
through the reference's own dataloader attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import itertools
import subprocess
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safeft.errors import SafeftError

REFERENCE = "/reference"  # suffix of a reference trainer's name in the benchmark ("vaccine/reference")

# Top-level module names that every checkout reuses: forgotten before and after an import, so that
# two checkouts (and their `utils`, `loss_func`, ...) never see each other's modules.
_CLASHING = ("trainer", "utils", "loss_func", "models", "loggers")


def _forget_reference_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _CLASHING:
            del sys.modules[name]


def import_reference_trainer(checkout: Path) -> types.ModuleType:
    """The checkout's `trainer` module, imported from its path (no file is copied or changed)."""
    import transformers.file_utils

    if not (Path(checkout) / "trainer.py").is_file():
        raise SafeftError(f"reference checkout {checkout}: no trainer.py there (expected a paper repository)")
    # Removed in transformers 5; the references import it (Vaccine, Lisa) but never need a TPU.
    transformers.file_utils.is_torch_tpu_available = lambda *args, **kwargs: False
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave the checkouts untouched
    _forget_reference_modules()
    sys.path.insert(0, str(checkout))
    try:
        return importlib.import_module("trainer")
    except ImportError as e:
        raise SafeftError(f"reference checkout {checkout}: its trainer.py does not import here: {e}") from e
    finally:
        sys.path.remove(str(checkout))
        sys.dont_write_bytecode = writes_bytecode
        _forget_reference_modules()  # the module keeps its own references to what it imported


def neutralise_label_rounding(module_globals: dict[str, Any]) -> None:
    """RepNoise's `masked_token_ce_loss` gets its mask as booleans instead of bfloat16 (see the module doc)."""
    masked_token_ce_loss = module_globals["masked_token_ce_loss"]
    if getattr(masked_token_ce_loss, "exact_labels", False):
        return

    def with_exact_labels(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_token_ce_loss(logits, labels, mask.bool())

    with_exact_labels.exact_labels = True  # type: ignore[attr-defined]
    module_globals["masked_token_ce_loss"] = with_exact_labels


def compatible(trainer_cls: type) -> type:
    """The reference trainer class, unchanged, under a subclass that bridges transformers 4 -> 5."""

    class Compatible(trainer_cls):  # type: ignore[misc, valid-type]
        use_apex = False
        do_grad_scaling = False

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            return super().training_step(model, inputs)

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            inputs = {k: v for k, v in inputs.items() if k != "activate_layers"}
            return super().compute_loss(model, inputs, *args, **kwargs)

    Compatible.__name__ = trainer_cls.__name__
    Compatible.__qualname__ = trainer_cls.__qualname__
    return Compatible


def git_commit(checkout: Path) -> str | None:
    """The checkout's commit, or None when it is not a git work tree."""
    try:
        done = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


# ----- which reference trainer stands beside which safeft method ------------------------------------


@dataclass(frozen=True)
class ReferenceTrainer:
    """One reference trainer class and how it is set up like a safeft method."""

    method: str  # the safeft method it is compared with
    class_name: str  # in the checkout's trainer.py ("Trainer": transformers.Trainer itself)
    # The reference's hyper-parameters (attributes it reads from `self.args`) from safeft's method
    # config and the model's number of decoder blocks.
    arguments: Callable[[Any, int], dict[str, Any]]
    # Where it reads its harmful batches: attribute names of the dataloader and of its iterator.
    harmful_feed: tuple[str, ...] = ()
    harmful_batch_field: str = "harmful_batch_size"  # the safeft config field with their batch size

    def recognises(self, module: types.ModuleType) -> bool:
        cls = getattr(module, self.class_name, None)
        if self.method == "tvaccine":  # T-Vaccine's BaseTrainer draws blocks; Booster's is Vaccine
            return cls is not None and hasattr(cls, "switch_active_layers")
        if self.method == "vaccine" and self.class_name == "BaseTrainer":
            return (
                cls is not None
                and hasattr(cls, "pre_second_step")
                and not hasattr(cls, "switch_active_layers")
            )
        return cls is not None


# The references' SFT is transformers.Trainer itself (e.g. Booster train.py's default branch).
REFERENCE_TRAINERS = (
    ReferenceTrainer("sft", "Trainer", lambda c, blocks: {}),
    ReferenceTrainer(
        "vaccine", "BaseTrainer", lambda c, blocks: {"rho": c.perturbation_radius}
    ),  # git-disl/Booster
    ReferenceTrainer(
        "vaccine", "VaccineTrainer", lambda c, blocks: {"rho": c.perturbation_radius}
    ),  # git-disl/Vaccine
    ReferenceTrainer(
        "booster",
        "BoosterAlignmentTrainer",
        lambda c, blocks: {
            "lamb": c.harmful_weight,
            "alpha": c.simulated_step_size,
            "rho": 2.0,  # unused when perturb_aware is "False"
            "perturb_aware": "False",
            "guide_data_num": 1,
        },
        harmful_feed=("harmful_dataloader", "harmful_data_iter"),
    ),
    # rep_noise_loss(beta=args.lamb, alpha=args.rho): beta weighs the noise term, alpha the ascent term.
    ReferenceTrainer(
        "repnoise",
        "RepNoiseTrainer",
        lambda c, blocks: {"lamb": c.noise_weight, "rho": c.ascent_weight},
        harmful_feed=("harmful_dataloader",),
    ),
    ReferenceTrainer(
        "tvaccine",
        "BaseTrainer",
        lambda c, blocks: {
            "rho": c.perturbation_radius,
            "probability_steps": c.probability_steps,
            "lisa_interval_steps": c.resample_steps,
            "lisa_activated_layers": min(c.sampled_blocks, blocks),  # safeft clamps S alike
        },
        harmful_feed=("dangerous_dataloader", "data_iter_danferous"),
        harmful_batch_field="probe_batch_size",
    ),
)


@dataclass
class FoundReference:
    spec: ReferenceTrainer
    trainer_cls: type  # the reference's class (unchanged)
    checkout: Path | None  # None for transformers.Trainer
    commit: str | None

    @property
    def source(self) -> str:
        if self.checkout is None:
            import transformers

            return f"transformers.Trainer {transformers.__version__}"
        return f"{self.checkout.name}@{(self.commit or 'unknown')[:7]} trainer.py {self.spec.class_name}"


def find_reference_trainers(checkouts: Iterable[str | Path]) -> dict[str, FoundReference]:
    """safeft method -> the reference trainer found for it in the checkouts (the first checkout wins)."""
    from transformers import Trainer

    found: dict[str, FoundReference] = {}
    for checkout in checkouts:
        path = Path(checkout).expanduser().resolve()
        if not path.is_dir():
            raise SafeftError(
                f"bench --reference: {checkout} is not a folder (a checkout of a paper repository)"
            )
        module = import_reference_trainer(path)
        commit = git_commit(path)
        provided = 0
        for spec in REFERENCE_TRAINERS:
            if spec.class_name == "Trainer" or spec.method in found or not spec.recognises(module):
                continue
            cls = getattr(module, spec.class_name)
            if spec.method == "repnoise":  # the label-rounding bug neutralised, see the module doc
                neutralise_label_rounding(module.rep_noise_loss.__globals__)
            found[spec.method] = FoundReference(spec, cls, path, commit)
            provided += 1
        if not provided:
            names = ", ".join(sorted({s.class_name for s in REFERENCE_TRAINERS} - {"Trainer"}))
            raise SafeftError(
                f"bench --reference: {path}/trainer.py defines none of the reference trainers known here ({names})"
            )
    if found:
        found["sft"] = FoundReference(REFERENCE_TRAINERS[0], Trainer, None, None)
    return found


class _Endless:
    """Fixed batches, endlessly in order: stands in for a reference's dataloader and its iterator."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches = batches
        self._cycle = itertools.cycle(batches)

    def __iter__(self) -> _Endless:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in next(self._cycle).items()}

    def __len__(self) -> int:
        return len(self.batches)


def bench_trainer_class(found: FoundReference) -> type:
    """The reference class (with the compatibility layer) built with safeft's trainer keyword arguments."""
    spec = found.spec

    class Reference(compatible(found.trainer_cls)):  # type: ignore[misc]
        def __init__(
            self,
            *args: Any,
            method_config: Any = None,
            harmful_dataset: Any = None,
            alignment_dataset: Any = None,
            **kwargs: Any,
        ):
            from safeft.methods.hooks import find_decoder_blocks

            blocks = len(find_decoder_blocks(kwargs["model"]))
            for key, value in spec.arguments(method_config, blocks).items():
                setattr(kwargs["args"], key, value)
            super().__init__(*args, **kwargs)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            if spec.harmful_feed:
                size = (
                    getattr(method_config, spec.harmful_batch_field, None)
                    or self.args.per_device_train_batch_size
                )
                rows = list(harmful_dataset)
                feed = _Endless(
                    [self.data_collator(rows[i : i + size]) for i in range(0, len(rows) - size + 1, size)]
                )
                self.clock = self.steps = self.statistic = 0  # what the references' init() sets
                for attribute in spec.harmful_feed:
                    setattr(self, attribute, feed)

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            # The references print progress (T-Vaccine every step): kept out of the benchmark's output.
            with contextlib.redirect_stdout(io.StringIO()):
                return super().training_step(model, inputs, num_items_in_batch)

    Reference.__name__ = f"Reference{found.trainer_cls.__name__}"
    return Reference


def reference_registry(found: dict[str, FoundReference], registry: dict[str, Any]) -> dict[str, Any]:
    """`<method>/reference` -> a MethodSpec whose trainer is the reference's, for `measure_methods`."""
    out = dict(registry)
    for method, ref in found.items():
        out[method + REFERENCE] = dataclasses.replace(registry[method], trainer_cls=bench_trainer_class(ref))
    return out


def alternating_groups(size: int) -> Callable[[int, list[Any]], list[Any]]:
    """Round order for `measure_methods` when the steps come in groups of `size` (a reference and the
    safeft steps compared with it): each group back to back, in listed order in even rounds and
    reversed in odd ones, so that who goes first alternates."""

    def order(round_: int, steps: list[Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(steps), size):
            group = steps[i : i + size]
            out += group if round_ % 2 == 0 else group[::-1]
        return out

    return order
