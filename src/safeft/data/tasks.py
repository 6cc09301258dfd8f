"""The benign tasks of the user's fine-tuning: record formats and answer scoring, each in one place.

The formats are the reference experiments' (see shared/docs/DATA.md):

- ``sst2``: instruction `SST2_INSTRUCTION`, input = the sentence (byte for byte, trailing space
  kept), output = ``positive`` / ``negative`` (label 1 / 0).
- ``agnews``: instruction `AGNEWS_INSTRUCTION` (the four class names on their own lines),
  input = the text, output = ``World`` / ``Sports`` / ``Business`` / ``Sci/Tech`` (label 0..3).
- ``gsm8k``: instruction = the question, output = the worked answer with ``####`` replaced by
  ``The final answer is: ``.
- ``alpaca``: instruction / input (missing -> ``""``) / output as given; it has no accuracy.

Scoring, for a model's `answer` to a task record:

- classification (sst2, agnews). *Strict* (the reference's exact match): the answer, stripped of
  surrounding whitespace, equals the label word, case-insensitively. Nothing else is allowed, not
  even a trailing period: "Positive." is wrong under strict and right under lenient.
  *Lenient*: the label word occurs in the answer as a whole word (case-insensitive) and no other
  label word does.
- gsm8k. *Strict* (the reference's rule): the number after the last "The final answer is:" in the
  answer, or else the answer's last number, equals the reference's final number. *Lenient*: either
  of those two numbers of the answer equals it. Numbers are compared as decimals after removing
  thousands separators and "$": "1,234" == "1234", "3.50" == "3.5", "-7" is negative seven.
- alpaca: not scorable; both scores return None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from safeft.data.records import Record
from safeft.errors import unknown_name

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
SST2_LABELS = ("negative", "positive")  # index = SST-2 label

AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")  # index = AG News label
AGNEWS_INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:\n\n"
    + "".join(f"{name}\n" for name in AGNEWS_LABELS)
)

GSM8K_ANSWER_MARKER = "The final answer is: "


# ----- classification ------------------------------------------------------------------------------


def _label_pattern(word: str) -> re.Pattern[str]:
    # "Sci/Tech" contains a slash, so \b is not enough: no word character or slash may touch it.
    return re.compile(rf"(?<![\w/]){re.escape(word)}(?![\w/])", re.IGNORECASE)


def _classification_scorers(labels: tuple[str, ...]) -> tuple[Callable, Callable]:
    patterns = {word.casefold(): _label_pattern(word) for word in labels}

    def strict(answer: str, record: Record) -> bool:
        return answer.strip().casefold() == record.output.strip().casefold()

    def lenient(answer: str, record: Record) -> bool:
        found = {word for word, pattern in patterns.items() if pattern.search(answer)}
        return found == {record.output.strip().casefold()}

    return strict, lenient


def _sst2_record(row: dict[str, Any]) -> Record:
    return Record(SST2_INSTRUCTION, row["sentence"], SST2_LABELS[row["label"]], {"label": row["label"]})


def _agnews_record(row: dict[str, Any]) -> Record:
    return Record(AGNEWS_INSTRUCTION, row["text"], AGNEWS_LABELS[row["label"]], {"label": row["label"]})


# ----- GSM8K -------------------------------------------------------------------------------------

# A number as written in an answer: optional minus and "$" (either order), thousands groups or plain
# digits, optional decimals. A minus separated by a space ("16 - 3") is an operator, not a sign.
_NUMBER = re.compile(r"(-?)\$?(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
_MARKER = re.compile(r"the final answer is:?", re.IGNORECASE)


def _to_decimal(match: re.Match[str]) -> Decimal | None:
    sign = "-" if (match.group(1) or match.group(2)) else ""
    try:
        return Decimal(sign + match.group(3).replace(",", "") + (match.group(4) or ""))
    except InvalidOperation:  # pragma: no cover - the regex only lets digits through
        return None


def number_after_marker(text: str) -> Decimal | None:
    """The first number after the last "The final answer is:" in `text`, or None."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return None
    match = _NUMBER.search(text, markers[-1].end())
    return _to_decimal(match) if match else None


def last_number(text: str) -> Decimal | None:
    """The last number in `text`, or None."""
    matches = list(_NUMBER.finditer(text))
    return _to_decimal(matches[-1]) if matches else None


def final_number(text: str) -> Decimal | None:
    """The reference's rule: the number after "The final answer is:", else the last number."""
    after = number_after_marker(text)
    return after if after is not None else last_number(text)


def _gsm8k_strict(answer: str, record: Record) -> bool:
    reference = final_number(record.output)
    return reference is not None and final_number(answer) == reference


def _gsm8k_lenient(answer: str, record: Record) -> bool:
    reference = final_number(record.output)
    return reference is not None and reference in (number_after_marker(answer), last_number(answer))


def _gsm8k_record(row: dict[str, Any]) -> Record:
    return Record(row["question"], "", row["answer"].replace("####", GSM8K_ANSWER_MARKER))


# ----- Alpaca ------------------------------------------------------------------------------------


def _alpaca_record(row: dict[str, Any]) -> Record:
    # T-Vaccine's alpaca file (the AlpacaEval set) has no "input" key: treat it as empty.
    return Record(row["instruction"], row.get("input") or "", row["output"])


# ----- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A benign task: its data source, record format, evaluation split and answer scoring."""

    name: str
    source: str  # data source name in `safeft.data.sources.SOURCES`
    train_split: str
    eval_split: str
    eval_limit: int | None  # the reference scores the first `eval_limit` rows of the eval split
    fields: dict[str, tuple[type, ...]]  # raw row fields `to_record` needs, with their types
    _to_record: Callable[[dict[str, Any]], Record]
    _strict: Callable[[str, Record], bool] | None = None
    _lenient: Callable[[str, Record], bool] | None = None

    @property
    def scorable(self) -> bool:
        return self._strict is not None

    def to_record(self, raw_row: dict[str, Any]) -> Record:
        """The instruction-format record of one raw row (fields as in the data files)."""
        return self._to_record(raw_row)

    def score_strict(self, answer: str, record: Record) -> bool | None:
        """Exact-match accuracy of one answer; None for tasks without accuracy (alpaca)."""
        return self._strict(answer, record) if self._strict else None

    def score_lenient(self, answer: str, record: Record) -> bool | None:
        """Lenient accuracy of one answer (see the module docstring); None when not scorable."""
        return self._lenient(answer, record) if self._lenient else None

    def load_train(self, task_data: str | None = None, *, data_dir: str | Path | None = None) -> list[Record]:
        """Training rows: the task's training split, or `task_data` (a source name or a file in this task's raw format)."""
        return self._load(task_data, self.train_split, data_dir)

    def load_eval(self, task_data: str | None = None, *, data_dir: str | Path | None = None) -> list[Record]:
        """Evaluation rows: the first `eval_limit` rows of the eval split (or of `task_data`)."""
        records = self._load(task_data, self.eval_split, data_dir)
        return records[: self.eval_limit] if self.eval_limit is not None else records

    def _load(self, task_data: str | None, split: str, data_dir: str | Path | None) -> list[Record]:
        from safeft.data.sources import SOURCES, load_source  # sources imports this module

        if task_data is None:
            return load_source(self.source, data_dir=data_dir, split=split)
        if task_data in SOURCES:
            return load_source(task_data, data_dir=data_dir)
        return load_source(task_data, data_dir=data_dir, as_source=self.source)


_sst2_strict, _sst2_lenient = _classification_scorers(SST2_LABELS)
_agnews_strict, _agnews_lenient = _classification_scorers(AGNEWS_LABELS)

TASKS: dict[str, Task] = {
    "sst2": Task(
        "sst2",
        "sst2",
        "train",
        "validation",
        1000,
        {"sentence": (str,), "label": (int,)},
        _sst2_record,
        _sst2_strict,
        _sst2_lenient,
    ),
    "agnews": Task(
        "agnews",
        "agnews",
        "train",
        "test",
        1000,
        {"text": (str,), "label": (int,)},
        _agnews_record,
        _agnews_strict,
        _agnews_lenient,
    ),
    "gsm8k": Task(
        "gsm8k",
        "gsm8k",
        "train",
        "test",
        1000,
        {"question": (str,), "answer": (str,)},
        _gsm8k_record,
        _gsm8k_strict,
        _gsm8k_lenient,
    ),
    "alpaca": Task(
        "alpaca", "alpaca", "train", "train", None, {"instruction": (str,), "output": (str,)}, _alpaca_record
    ),
}
LABEL_WORDS: dict[str, tuple[str, ...]] = {"sst2": SST2_LABELS, "agnews": AGNEWS_LABELS}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]
