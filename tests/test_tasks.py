"""Benign tasks: the reference record formats (shared/docs/DATA.md) and answer scoring."""

from __future__ import annotations

from collections import Counter

import pytest

from safeft.data.records import Record
from safeft.data.tasks import TASKS, get_task
from safeft.errors import SafeftError

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
AGNEWS_INSTRUCTION = "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n"


def test_registry():
    assert set(TASKS) == {"sst2", "agnews", "gsm8k", "alpaca"}
    with pytest.raises(SafeftError, match=r"unknown task 'sst-2'.*did you mean 'sst2'"):
        get_task("sst-2")


# ----- formats -----------------------------------------------------------------------------------


def test_sst2_format():
    task = get_task("sst2")
    assert task.to_record({"idx": 0, "sentence": "a charming journey . ", "label": 1}) == Record(
        SST2_INSTRUCTION, "a charming journey . ", "positive"
    )
    assert task.to_record({"sentence": "dull", "label": 0}).output == "negative"


def test_agnews_format_lists_the_four_names_on_their_own_lines():
    record = get_task("agnews").to_record({"text": "Stocks fell.", "label": 2})
    assert record == Record(AGNEWS_INSTRUCTION, "Stocks fell.", "Business")
    assert [get_task("agnews").to_record({"text": "t", "label": i}).output for i in range(4)] == [
        "World",
        "Sports",
        "Business",
        "Sci/Tech",
    ]


def test_gsm8k_format_replaces_the_hash_marker():
    record = get_task("gsm8k").to_record({"question": "How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"})
    assert record == Record("How many?", "", "2 + 3 = <<2+3=5>>5\nThe final answer is:  5")


def test_alpaca_format():
    assert get_task("alpaca").to_record({"instruction": "Hi", "output": "Hello"}) == Record("Hi", "", "Hello")


# ----- loading -----------------------------------------------------------------------------------


def test_sst2_eval_is_the_872_validation_rows(shared_data):
    records = get_task("sst2").load_eval(data_dir=shared_data)
    assert len(records) == 872
    assert Counter(r.output for r in records) == {"positive": 444, "negative": 428}


def test_agnews_test_split_balance(shared_data):
    from safeft.data.sources import load_source

    records = load_source("agnews", data_dir=shared_data, split="test")
    assert Counter(r.output for r in records) == dict.fromkeys(
        ["World", "Sports", "Business", "Sci/Tech"], 1900
    )
    assert len(get_task("agnews").load_eval(data_dir=shared_data)) == 1000


def test_gsm8k_eval_is_the_first_1000_test_rows(shared_data):
    records = get_task("gsm8k").load_eval(data_dir=shared_data)
    assert len(records) == 1000
    assert records[0].instruction.startswith("Janet’s ducks lay 16 eggs per day.")
    assert records[0].output.endswith("The final answer is:  18")


def test_train_split_is_first_rows_in_file_order(shared_data):
    records = get_task("sst2").load_train(data_dir=shared_data)
    assert len(records) == 67349
    assert records[0].input == "hide new secretions from the parental units "


def test_task_data_file_in_the_raw_format(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "1+1?", "answer": "#### 2"}\n', encoding="utf-8")
    (record,) = get_task("gsm8k").load_train(str(path))
    assert record.output == "The final answer is:  2"


# ----- scoring -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "strict", "lenient"),
    [
        ("positive", True, True),
        ("  Positive\n", True, True),
        ("Positive.", False, True),
        ("The sentiment is positive", False, True),
        ("positive or negative", False, False),
        ("negative", False, False),
        ("positively", False, False),
        ("", False, False),
    ],
)
def test_sst2_scoring(answer, strict, lenient):
    task, record = get_task("sst2"), Record(SST2_INSTRUCTION, "great", "positive")
    assert (task.score_strict(answer, record), task.score_lenient(answer, record)) == (strict, lenient)


@pytest.mark.parametrize(
    ("answer", "strict", "lenient"),
    [
        ("Sci/Tech", True, True),
        ("sci/tech", True, True),
        ("Category: Sci/Tech.", False, True),
        ("Sci", False, False),
        ("Sci/Tech or Business", False, False),
        ("World", False, False),
    ],
)
def test_agnews_scoring(answer, strict, lenient):
    task, record = get_task("agnews"), Record(AGNEWS_INSTRUCTION, "New chip", "Sci/Tech")
    assert (task.score_strict(answer, record), task.score_lenient(answer, record)) == (strict, lenient)


def _gsm8k(reference_number: str) -> Record:
    return Record("q", "", f"some work\nThe final answer is:  {reference_number}")


@pytest.mark.parametrize(
    ("answer", "reference", "strict"),
    [
        ("The final answer is: 18", "18", True),
        ("9 * 2 = 18 dollars", "18", True),  # no marker: the last number
        ("The final answer is: 1,234", "1234", True),
        ("The final answer is: $1,234.00", "1234", True),
        ("The final answer is: 3.50", "3.5", True),
        ("The final answer is: -7", "-7", True),
        ("The final answer is: $-7", "-7", True),
        ("The final answer is: 7", "-7", False),
        ("16 - 3 - 4 = 9", "9", True),  # "- 4" is subtraction, not minus four
        ("The final answer is: 18. Check: 18 - 1 = 17", "18", True),  # marker wins over the last number
        ("The final answer is: 17. I think it is 18", "18", False),
        ("no number at all", "18", False),
        ("The final answer is: 1,2", "12", False),  # "1,2" is not a thousands group
    ],
)
def test_gsm8k_strict(answer, reference, strict):
    assert get_task("gsm8k").score_strict(answer, _gsm8k(reference)) is strict


def test_gsm8k_lenient_accepts_the_last_number_too():
    task, record = get_task("gsm8k"), _gsm8k("18")
    answer = "The final answer is: 17. I think it is 18"
    assert task.score_strict(answer, record) is False
    assert task.score_lenient(answer, record) is True
    assert task.score_lenient("The answer is 20", record) is False


def test_gsm8k_reference_rows_score_themselves(shared_data):
    task = get_task("gsm8k")
    records = task.load_eval(data_dir=shared_data)
    assert all(task.score_strict(r.output, r) for r in records)


def test_alpaca_is_not_scorable():
    task = get_task("alpaca")
    assert not task.scorable
    assert task.score_strict("x", Record("i", "", "o")) is None
    assert task.score_lenient("x", Record("i", "", "o")) is None
