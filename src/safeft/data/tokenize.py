"""Records -> token ids for supervised fine-tuning, and the padding collator.

`encode` tokenises the prompt (the template around instruction and input) and the response
separately and concatenates the ids, so the prompt/response boundary is exact: no token straddles
it. Only response tokens (and the EOS appended after them) are trained on; prompt tokens have label
-100, the index cross-entropy ignores.

Truncation, to at most `max_length` tokens, cuts from the right:

- the response (with its EOS) is cut first, so a long answer loses its end (and its EOS);
- if the prompt alone takes `max_length` tokens or more, the prompt keeps its first
  `max_length - 1` tokens and the response its first token, so every row still has one label.
"""

from __future__ import annotations

from typing import Any

import torch

from safeft.data.records import Record
from safeft.data.templates import format_prompt
from safeft.errors import SafeftError

IGNORE_INDEX = -100


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The BOS the tokenizer puts before a text by default (Llama: [<s>]; GPT-2, BERT: none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def encode(record: Record, tokenizer: Any, max_length: int, template: str = "alpaca") -> dict[str, list[int]]:
    """input_ids, attention_mask and labels of one record (prompt tokens masked with -100)."""
    if max_length < 2:
        raise SafeftError(f"max_length must be >= 2 (one prompt and one response token), got {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise SafeftError(
            f"the tokenizer {type(tokenizer).__name__} has no EOS token; set tokenizer.eos_token before encoding"
        )
    # The chat template writes its own special tokens into the text; Alpaca text gets the tokenizer's BOS.
    prefix = _leading_special_ids(tokenizer) if template == "alpaca" else []
    prompt = prefix + _ids(tokenizer, format_prompt(record, template, tokenizer))
    response = _ids(tokenizer, record.output) + [eos]
    if len(prompt) >= max_length:
        prompt, response = prompt[: max_length - 1], response[:1]
    else:
        response = response[: max_length - len(prompt)]
    input_ids = prompt + response
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt) + response,
    }


class PaddingCollator:
    """Pads a batch of `encode` outputs: input_ids with the pad id, labels with -100, attention_mask with 0.

    Other keys with a number per row (e.g. a harmful/benign flag) become 1-d tensors; other keys are dropped.
    """

    PAD_VALUES = {"input_ids": None, "labels": IGNORE_INDEX, "attention_mask": 0}

    def __init__(
        self, tokenizer_pad_id: int | None, pad_to_multiple_of: int | None = None, padding_side: str = "right"
    ):
        if tokenizer_pad_id is None:
            raise SafeftError(
                "the tokenizer has no pad token id; use the EOS token as pad (safeft.models.ensure_pad_token) first"
            )
        if padding_side not in ("left", "right"):
            raise SafeftError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise SafeftError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_id = tokenizer_pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise SafeftError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for key, value in self.PAD_VALUES.items():
            if key not in features[0]:
                continue
            pad = self.pad_id if value is None else value
            rows = []
            for f in features:
                ids = list(f[key])
                fill = [pad] * (length - len(ids))
                rows.append(fill + ids if self.padding_side == "left" else ids + fill)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        for key, value in features[0].items():
            if key not in batch and key not in self.PAD_VALUES and isinstance(value, (int, float, bool)):
                batch[key] = torch.tensor([f[key] for f in features])
        return batch
