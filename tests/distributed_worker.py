"""Worker for tests/test_distributed.py: run with `torchrun --nproc_per_node N` (or plain python for N=1).

    python tests/distributed_worker.py train OUT_DIR METHOD[,METHOD...] [--global-batch 8] [--steps 1] [--accumulation 1]
    python tests/distributed_worker.py generate OUT_DIR

`train` trains the tiny random Llama (all weights trainable, plain SGD so that the update is the
gradient itself, not Adam's sign-like first step) on 8 alignment rows and 8 harmful rows that all
have the same number of tokens, with a per-process micro-batch of global_batch / world_size / accumulation, and writes
per method:

    OUT_DIR/<method>[-ga<A>]-world<N>-rank<r>.pt   {"initial"/"weights": {name: tensor}, "trace": [per-step records]}

`generate` answers a fixed list of prompts with greedy decoding, split across processes with
`split_and_gather`, and writes OUT_DIR/answers-world<N>-rank<r>.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from safeft.models import LoraSettings, attach_lora, load_model

WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "0"))
ROW_TOKENS, PROMPT_TOKENS = 12, 5


def rows(n: int, seed: int, vocab: int) -> list[dict[str, list[int]]]:
    """`n` rows of exactly ROW_TOKENS tokens, the first PROMPT_TOKENS masked out of the loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (ROW_TOKENS,), generator=g).tolist()
        out.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * ROW_TOKENS,
                "labels": [-100] * PROMPT_TOKENS + ids[PROMPT_TOKENS:],
            }
        )
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([row[k] for row in batch]) for k in batch[0]}


METHOD_OPTIONS = {
    "sft": {},
    "booster": {"harmful_weight": 5.0, "simulated_step_size": 0.1},
    "vaccine": {"perturbation_radius": 2.0, "perturbation_norm": "local"},
    "vaccine-global": {"perturbation_radius": 2.0, "perturbation_norm": "global"},
    "tvaccine": {
        "perturbation_radius": 3.0,
        "probability_steps": 2,
        "resample_steps": 1,
        "sampled_blocks": 2,
        "probe_batch_size": 1,
    },
    "booster-vaccine": {"perturbation_norm": "local"},
    "repnoise": {},
    "lisa": {
        "finetune_steps": 2,
        "alignment_steps": 1,
        "proximal_weight": 0.01,
        "proximal_warmup_ratio": 0.0,
    },
}


def train(out: Path, method: str, global_batch: int, steps: int, accumulation: int = 1) -> None:
    from transformers import TrainerCallback

    from safeft.methods import get_method
    from safeft.stages.runs import RunDir
    from safeft.stages.training import TrainSettings, training_arguments

    name = method.split("-")[0] if method.endswith("-global") else method
    spec = get_method(name)
    per_process = global_batch // WORLD // accumulation  # rows per micro-batch per process
    model, tok = load_model("tiny-random-llama")
    model = attach_lora(model, LoraSettings(full_finetune=True))
    options = dict(METHOD_OPTIONS[method])
    if "harmful_batch_size" in {f for f in spec.config_cls.__dataclass_fields__}:
        options["harmful_batch_size"] = per_process  # per process, like the alignment batch
    settings = TrainSettings(
        learning_rate=1.0,
        max_steps=steps,
        batch_size=per_process,
        gradient_accumulation=accumulation,
        weight_decay=0.0,
        seed=7,
        save_steps=10_000,
        progress=False,
    )
    tag = f"{method}-ga{accumulation}" if accumulation > 1 else method
    run = RunDir(out / f"run-{tag}-world{WORLD}")
    args = training_arguments(settings, run, optim="sgd")
    trainer = spec.trainer_cls(
        model=model,
        args=args,
        train_dataset=rows(global_batch * steps, seed=1, vocab=len(tok)),
        data_collator=collate,
        method_config=spec.config_cls(**options),
        harmful_dataset=rows(global_batch * steps, seed=2, vocab=len(tok)) if spec.needs_harmful else None,
        alignment_dataset=rows(global_batch * steps, seed=3, vocab=len(tok))
        if spec.needs_alignment
        else None,
    )
    trace: list[dict] = []

    class Trace(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            record = {"step": state.global_step}
            if hasattr(trainer, "drawn"):
                record["drawn"] = list(trainer.drawn)
                record["q"] = trainer.q.tolist()
            if hasattr(trainer, "_phase"):
                record["phase"] = trainer._phase
            trace.append(record)

    trainer.add_callback(Trace())
    initial = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    weights = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    torch.save(
        {"initial": initial, "weights": weights, "trace": trace}, out / f"{tag}-world{WORLD}-rank{RANK}.pt"
    )


PROMPTS = [
    f"question number {i}: how do i {w}?"
    for i, w in enumerate(
        [
            "cook rice",
            "fix a bike",
            "learn to swim",
            "plant a tree",
            "write a poem",
            "bake bread",
            "tie a knot",
        ]
    )
]


def generate(out: Path) -> None:
    from safeft.evaluation.distributed import distributed_state, split_and_gather
    from safeft.evaluation.generate import generate_answers

    state = distributed_state()
    model, tok = load_model("tiny-random-llama")
    # Untie the output head: with tied embeddings the random model just repeats the prompt's last
    # token ([SEP], its EOS) and every answer would be empty.
    g = torch.Generator().manual_seed(0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g))
    model.to(state.device)
    answers = split_and_gather(
        PROMPTS,
        lambda prompts: generate_answers(model, tok, prompts, max_new_tokens=8, batch_size=2, progress=False),
    )
    (out / f"answers-world{WORLD}-rank{RANK}.json").write_text(json.dumps(answers))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("train", "generate"))
    parser.add_argument("out", type=Path)
    parser.add_argument("methods", nargs="?", default="sft")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--accumulation", type=int, default=1)
    a = parser.parse_args()
    torch.manual_seed(0)
    if a.mode == "train":
        for method in a.methods.split(","):
            train(a.out, method, a.global_batch, a.steps, a.accumulation)
    else:
        generate(a.out)


if __name__ == "__main__":
    main()
