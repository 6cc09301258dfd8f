"""Shared helpers of the method tests: tiny models, in-memory rows, a padding collator, Trainer args."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from safeft.methods import get_method
from safeft.models import LoraSettings, attach_lora, load_model


def tiny(name: str = "tiny-random-llama", full: bool = False) -> Any:
    model, _ = load_model(name)
    return attach_lora(model, LoraSettings(full_finetune=full))


def rows(n: int, seed: int, vocab: int = 1000, offset: int = 1000) -> list[dict[str, list[int]]]:
    """Encoded rows of random tokens: a prompt (label -100) then a response (labels = tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt_len = int(torch.randint(3, 7, (1,), generator=g))
        answer_len = int(torch.randint(3, 7, (1,), generator=g))
        ids = (torch.randint(0, vocab, (prompt_len + answer_len,), generator=g) + offset).tolist()
        out.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * prompt_len + ids[prompt_len:],
            }
        )
    return out


def collate(batch: list[dict[str, list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right padding: pad token, attention 0, label -100."""
    width = max(len(r["input_ids"]) for r in batch)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in batch])

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }


def args(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def trainer(
    method: str,
    model: Any,
    tmp_path: Any,
    config: Any = None,
    n: int = 16,
    train_args: dict | None = None,
    **kw: Any,
) -> Any:
    spec = get_method(method)
    return spec.trainer_cls(
        model=model,
        args=args(tmp_path, **(train_args or {})),
        train_dataset=rows(n, seed=1),
        data_collator=collate,
        method_config=config if config is not None else spec.config_cls(),
        harmful_dataset=rows(n, seed=2),
        alignment_dataset=rows(n, seed=3),
        **kw,
    )


class _GradsBeforeStep(TrainerCallback):
    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


def assert_gradients_match(model: Any, expected: dict[str, torch.Tensor]) -> None:
    """Every trainable parameter's `.grad` equals the independently computed `expected[name]`."""
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-4)


def accumulation_matches_mean_of_micro_batch_gradients(method, config, tmp_path):
    """Trainer with 2 micro-batches of 4: the optimizer sees the mean of the two method gradients."""
    model = tiny()
    capture = _GradsBeforeStep(model)
    t = trainer(
        method,
        model,
        tmp_path,
        config,
        callbacks=[capture],
        train_args=dict(max_steps=1, gradient_accumulation_steps=2, max_grad_norm=0.0, learning_rate=0.0),
    )
    micro_batches, harmful_batches = [], []
    original_step, original_next = t.training_step, t.next_batch

    def recording_step(m, inputs, n=None):
        micro_batches.append({k: v.clone() for k, v in inputs.items()})
        return original_step(m, inputs, n)

    def recording_next(which, size):
        harmful_batches.append(original_next(which, size))
        return harmful_batches[-1]

    t.training_step, t.next_batch = recording_step, recording_next
    t.train()
    assert len(micro_batches) == 2

    # Each micro-batch's method gradient on its own (fresh trainer: no accumulation, same weights).
    single = trainer(method, model, tmp_path, config)
    per_micro = []
    for i, batch in enumerate(micro_batches):
        queue = iter(harmful_batches[i * len(harmful_batches) // 2 : (i + 1) * len(harmful_batches) // 2])
        single.next_batch = lambda which, size, q=queue: next(q)
        single.zero_grads()
        single.training_step(model, batch)
        per_micro.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for n, g in capture.grads.items():
        torch.testing.assert_close(g, (per_micro[0][n] + per_micro[1][n]) / 2, atol=1e-6, rtol=1e-5)
