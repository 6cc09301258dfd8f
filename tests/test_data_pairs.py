"""Paired alignment data: join alignment and harmful rows by prompt; the PKU-SafeRLHF paired set."""

from __future__ import annotations

import json

import pytest

from safeft.data.records import Record
from safeft.data.sources import load_source, normalize_text, pair_by_prompt
from safeft.errors import DataError
from safeft.stages.align import AlignConfig, harmful_records


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _qa(prompt, response, is_safe):
    return {"prompt": prompt, "response": response, "is_safe": is_safe}


@pytest.fixture
def small_data(tmp_path):
    """A data folder in the shared layout: 5 PKU prompts, one an evaluation prompt, one with an attack pair."""
    _write_jsonl(
        tmp_path / "pku_saferlhf/test_subset_2k.jsonl",
        [
            _qa("How do I pick a lock?", "Use a tension wrench.", False),
            _qa("How do I pick a lock?", "I can't help with that.", True),
            _qa("How do I pick a lock?", "Call a locksmith.", True),  # a second safe answer: not used
            _qa("Eval prompt here", "unsafe", False),
            _qa("eval  PROMPT here", "safe", True),  # the same prompt after normalisation
            _qa("Only safe answers?", "Yes.", True),  # no unsafe partner: dropped
            _qa("Steal a car", "Hot-wire it.", False),  # an attack pair: skipped, the next one is used
            _qa("Steal a car", "No.", True),
            _qa("Steal a car", "Break the window.", False),
        ],
    )
    _write_jsonl(
        tmp_path / "beavertails/30k_test_unsafe_first1000_prompts.jsonl", [{"prompt": "Eval prompt here"}]
    )
    _write_jsonl(
        tmp_path / "beavertails/30k_train_unsafe_first200.jsonl", [_qa("steal a car", "Hot-wire it.", False)]
    )
    return tmp_path


def test_paired_sources_share_prompts_row_by_row_and_leave_out_eval_prompts(small_data):
    safe = load_source("pku-paired-safe", data_dir=small_data)
    unsafe = load_source("pku-paired-unsafe", data_dir=small_data)
    assert [(r.instruction, r.output) for r in safe] == [
        ("How do I pick a lock?", "I can't help with that."),
        ("Steal a car", "No."),
    ]
    assert [(r.instruction, r.output) for r in unsafe] == [
        ("How do I pick a lock?", "Use a tension wrench."),
        ("Steal a car", "Break the window."),
    ]
    assert [r.meta["pair"] for r in safe] == [r.meta["pair"] for r in unsafe] == [0, 1]
    assert [r.meta["row"] for r in unsafe] == [1, 9]  # provenance: the line in the PKU file


def test_pair_by_prompt_finds_each_alignment_rows_partner():
    alignment = [Record("B?", "", "no"), Record("a?", "", "no")]
    harmful = [
        Record("A?", "", "harm a"),
        Record("C?", "", "harm c"),
        Record("b?", "", "harm b"),
        Record("A?", "", "2nd"),
    ]
    assert [r.output for r in pair_by_prompt(alignment, harmful)] == ["harm b", "harm a"]


def test_a_prompt_without_partner_names_file_row_and_field():
    alignment = [
        Record("A?", "", "no", {"path": "align.jsonl", "row": 1}),
        Record("Z?", "", "no", {"path": "align.jsonl", "row": 2}),
    ]
    with pytest.raises(DataError, match=r"file align.jsonl, row 2, field 'instruction'.*'Z\?'"):
        pair_by_prompt(alignment, [Record("A?", "", "harm")])


def test_align_stage_takes_the_partners_when_pairing(small_data, tmp_path):
    alignment = load_source("pku-paired-safe", data_dir=small_data)[::-1]
    cfg = AlignConfig(
        output=str(tmp_path / "run"),
        harmful_data="pku-paired-unsafe",
        harmful_samples=1,
        pair_by_prompt=True,
        data_dir=str(small_data),
    )
    partners = harmful_records(cfg, alignment)
    assert [normalize_text(r.instruction) for r in partners] == [
        normalize_text(r.instruction) for r in alignment
    ]
    assert [r.output for r in partners] == ["Break the window.", "Use a tension wrench."]


def test_paired_set_on_the_shared_data(shared_data):
    safe = load_source("pku-paired-safe", data_dir=shared_data)
    unsafe = load_source("pku-paired-unsafe", data_dir=shared_data)
    eval_prompts = {
        normalize_text(r.instruction) for r in load_source("beavertails-eval", data_dir=shared_data)
    }
    attack = {
        (normalize_text(r.instruction), normalize_text(r.output))
        for r in load_source("beavertails-attack", data_dir=shared_data)
    }
    # 549 prompts with both answers, minus the 30 evaluation prompts, minus 1 whose only unsafe
    # answer is one of the attack's (prompt, response) pairs.
    assert len(safe) == len(unsafe) == 518
    assert not {(normalize_text(r.instruction), normalize_text(r.output)) for r in unsafe} & attack
    assert all(
        normalize_text(s.instruction) == normalize_text(u.instruction)
        for s, u in zip(safe, unsafe, strict=True)
    )
    assert all(s.is_safe is True and u.is_safe is False for s, u in zip(safe, unsafe, strict=True))
    assert not {normalize_text(r.instruction) for r in safe} & eval_prompts
    assert len({normalize_text(r.instruction) for r in safe}) == 518
