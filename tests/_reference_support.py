"""The common ground of a reference-equivalence run: model, LoRA, rows, batches, Trainer arguments.

`scripts/reference_golden.py` runs the reference trainers on this ground and stores what they
produce under `tests/fixtures/reference/`; `tests/test_reference_equivalence.py` runs safeft's
trainers on the same ground and compares. Nothing here comes from the reference repositories.

Every random thing is built from an explicit seed here (never from a seed set elsewhere), so the
two sides start from the same weights whatever the rest of the code base does with seeds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback, TrainingArguments

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
PAD_ID = 0  # also the reference's `labels == 0 -> ignored` convention in RepNoise's masked loss
VOCAB = 1000  # > 256: bfloat16 cannot hold every token id (RepNoise's label-rounding bug would show)
WEIGHT_SEED = 1234  # model and LoRA initialisation
ROW_SEED = 99  # token ids of the rows
NOISE_SEED = 7  # the global generator is reseeded with NOISE_SEED + step before each step (RepNoise's noise)


@dataclass(frozen=True)
class Case:
    """One reference-equivalence run: a method on a tiny Llama for `steps` optimizer steps."""

    name: str  # fixture file stem
    method: str  # safeft method name
    blocks: int
    optimizer: str  # Trainer's `optim`
    learning_rate: float
    steps: int
    batch_size: int
    train_batches: int  # batches in the training set (Lisa's warm-up depends on its length)
    safeft_config: dict[str, Any] = field(default_factory=dict)
    train_kind: str = "alignment"  # which rows the Trainer's own dataset holds: "alignment" or "user"
    feeds: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # which -> (kind, batches, rows)
    paired_harmful: bool = False  # harmful batch i holds the harmful answers to train batch i's prompts


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("sft", "sft", 4, "sgd", 1.0, 3, 4, 3),
        Case("vaccine", "vaccine", 4, "sgd", 1.0, 3, 4, 3, {"perturbation_radius": 2.0}),
        Case(
            "tvaccine_4blocks",
            "tvaccine",
            4,
            "sgd",
            1.0,
            3,
            4,
            3,
            {"perturbation_radius": 3.0, "probability_steps": 2, "resample_steps": 1, "sampled_blocks": 2},
            feeds={"harmful": ("harmful", 2, 1)},  # the probe at steps 0 and 2, one row each
        ),
        Case(
            "tvaccine_28blocks",
            "tvaccine",
            28,
            "adamw_torch",
            1e-2,
            3,
            4,
            3,
            {"perturbation_radius": 3.0, "probability_steps": 2, "resample_steps": 1, "sampled_blocks": 3},
            feeds={"harmful": ("harmful", 2, 1)},
        ),
        Case(
            "booster",
            "booster",
            4,
            "sgd",
            1.0,
            3,
            4,
            3,
            {"harmful_weight": 5.0, "simulated_step_size": 0.1, "harmful_batch_size": 4},
            feeds={"harmful": ("harmful", 3, 4)},
        ),
        Case(
            "booster_vaccine",
            "booster-vaccine",
            4,
            "sgd",
            1.0,
            3,
            4,
            3,
            {
                "harmful_weight": 5.0,
                "simulated_step_size": 0.1,
                "harmful_batch_size": 4,
                "perturbation_radius": 2.0,
            },
            feeds={"harmful": ("harmful", 3, 4)},
        ),
        Case(
            "repnoise",
            "repnoise",
            4,
            "sgd",
            1.0,
            3,
            4,
            3,
            {"ascent_weight": 0.5, "noise_weight": 1.0, "harmful_batch_size": 4},
            feeds={"harmful": ("harmful", 3, 4)},
            paired_harmful=True,
        ),
        # Lisa: 2 alignment steps, then 2 fine-tuning steps. The reference switches the proximal
        # term on when step > 0.1 * len(train dataloader) * epochs = 0.1 * 5 * 2 = 1; safeft's
        # warm-up ratio 0.25 of 4 steps names the same boundary (1).
        Case(
            "lisa",
            "lisa",
            4,
            "sgd",
            1.0,
            4,
            4,
            5,
            {
                "finetune_steps": 2,
                "alignment_steps": 2,
                "proximal_weight": 1.0,
                "proximal_warmup_ratio": 0.25,
            },
            train_kind="user",
            feeds={"alignment": ("alignment", 2, 4)},
        ),
    )
}
LISA_REFERENCE_EPOCHS = 2  # with 5 training batches: the reference's warm-up boundary is 0.1 * 5 * 2 = 1


# ----- model ---------------------------------------------------------------------------------------


def build_model(blocks: int, seed: int = WEIGHT_SEED) -> Any:
    """A tiny random Llama (hidden 64) with a fresh LoRA (r=4, alpha=4, q/k/v, no dropout), from `seed`."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=blocks,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.1,  # larger than the default 0.02 so that hidden-state gradients are not tiny
        attn_implementation="eager",
    )
    lora = LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"], bias="none"
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = get_peft_model(LlamaForCausalLM(config), lora)
    return model


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every weight (names and fp32 bytes, in name order): the fixture's initial weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def lora_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ----- rows and batches ----------------------------------------------------------------------------


def make_rows(case: Case, seed: int = ROW_SEED) -> dict[str, Any]:
    """Token-id rows of one case: the Trainer's dataset and the batches each extra stream yields, in order.

    Every prompt has a refusal and a harmful answer (paired rows, as RepNoise's reference presumes);
    alignment rows are prompt -> refusal, harmful rows prompt -> harmful answer, user rows are
    unrelated prompt -> answer pairs. Labels are -100 on the prompt.
    """
    g = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=g))
        return (torch.randint(3, VOCAB, (n,), generator=g)).tolist()

    def row(prompt: list[int], answer: list[int]) -> dict[str, list[int]]:
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}

    prompts = [tokens(4, 8) for _ in range(64)]
    refusals = [tokens(3, 7) for _ in prompts]
    harmful = [tokens(3, 7) for _ in prompts]
    n_train = case.train_batches * case.batch_size
    if case.train_kind == "alignment":
        train = [row(prompts[i], refusals[i]) for i in range(n_train)]
    else:
        train = [row(tokens(4, 8), tokens(3, 7)) for _ in range(n_train)]
    feeds: dict[str, list[list[dict[str, list[int]]]]] = {}
    next_prompt = n_train  # extra streams use prompts the Trainer's rows do not, unless paired
    for which, (kind, batches, size) in case.feeds.items():
        feeds[which] = []
        for b in range(batches):
            if case.paired_harmful and which == "harmful":
                index = list(range(b * case.batch_size, (b + 1) * case.batch_size))
            else:
                index = list(range(next_prompt, next_prompt + size))
                next_prompt += size
            answers = harmful if kind == "harmful" else refusals
            feeds[which].append([row(prompts[i], answers[i]) for i in index])
    return {"train_rows": train, "feeds": feeds}


def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right padding: PAD_ID, attention 0, label -100."""
    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.tensor([r["input_ids"] + [PAD_ID] * p for r, p in zip(rows, pad, strict=True)]),
        "attention_mask": torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * p for r, p in zip(rows, pad, strict=True)]
        ),
        "labels": torch.tensor([r["labels"] + [-100] * p for r, p in zip(rows, pad, strict=True)]),
    }


class Feed:
    """The batches an extra data stream yields, in order; an error if asked for one more."""

    def __init__(self, name: str, batches: list[list[dict[str, list[int]]]]):
        self.name, self.batches, self.used = name, batches, 0

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.used == len(self.batches):
            raise AssertionError(
                f"the {self.name} stream was asked for more than its {len(self.batches)} batches"
            )
        self.used += 1
        return collate(self.batches[self.used - 1])


# ----- the Trainer's side --------------------------------------------------------------------------


def training_arguments(case: Case, output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """Identical on both sides: no clipping, no weight decay, constant learning rate, CPU, fp32."""
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=case.steps,
        per_device_train_batch_size=case.batch_size,
        learning_rate=case.learning_rate,
        optim=case.optimizer,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def sequential(trainer_cls: type) -> type:
    """`trainer_cls` whose training rows come in dataset order (batch i = rows i*B .. i*B+B-1)."""

    class InOrder(trainer_cls):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> SequentialSampler:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    InOrder.__name__ = f"InOrder{trainer_cls.__name__}"
    return InOrder


class ReseedEachStep(TrainerCallback):
    """Reseed the global generator before each step: both sides draw the same noise (RepNoise)."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.manual_seed(NOISE_SEED + state.global_step)


def fixture_paths(name: str, folder: Path = FIXTURES) -> tuple[Path, Path]:
    return folder / f"{name}.json", folder / f"{name}.safetensors"


def load_fixture(name: str, folder: Path = FIXTURES) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    meta_path, tensors_path = fixture_paths(name, folder)
    return json.loads(meta_path.read_text()), load_file(tensors_path)
