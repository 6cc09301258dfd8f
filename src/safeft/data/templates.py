"""Prompt templates. The Alpaca template is what every reference experiment uses."""

from __future__ import annotations

from typing import Protocol

from safeft.data.records import Record

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat")


class _ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> str: ...


def format_prompt(record: Record, template: str = "alpaca", tokenizer: _ChatTokenizer | None = None) -> str:
    """The text the model sees before its response."""
    if template == "alpaca":
        if record.input:
            return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
        return ALPACA_NO_INPUT.format(instruction=record.instruction)
    if template == "chat":
        if tokenizer is None:
            raise ValueError("the 'chat' template needs the model's tokenizer")
        user = record.instruction + (f"\n\n{record.input}" if record.input else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")
