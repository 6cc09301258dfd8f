"""The poisoned mix: exact counts, first rows of each pool, seeded order, overlap reporting."""

from __future__ import annotations

from collections import Counter

import pytest

from safeft.data.mix import build_poisoned_mix
from safeft.data.records import Record
from safeft.data.sources import load_source
from safeft.errors import SafeftError

BENIGN = [Record(f"benign {i}", "", "ok", {"row": i + 1}) for i in range(1000)]
HARMFUL = [Record(f"harmful {i}", "", "bad", {"row": i + 1, "is_safe": False}) for i in range(300)]


def _roles(mix):
    return Counter(r.meta["mix_role"] for r in mix)


@pytest.mark.parametrize(
    ("n", "p", "harmful"),
    [
        (500, 0.05, 25),
        (1000, 0.1, 100),
        (1000, 0.2, 200),
        (1000, 0.0, 0),
        (200, 1.0, 200),
        (50, 0.05, 3),  # 2.5 rounds half-up to 3 (Python's round would give 2)
        (10, 0.25, 3),  # 2.5 -> 3
        (30, 0.05, 2),  # 1.5 -> 2
        (7, 0.1, 1),  # 0.7 -> 1
        (7, 0.07, 0),  # 0.49 -> 0
    ],
)
def test_exact_counts(n, p, harmful):
    mix, report = build_poisoned_mix(BENIGN, HARMFUL, n, p, seed=0)
    assert len(mix) == n
    assert (report.n_harmful, report.n_benign) == (harmful, n - harmful)
    assert _roles(mix) == {k: v for k, v in {"harmful": harmful, "benign": n - harmful}.items() if v}


def test_takes_the_first_rows_of_each_pool():
    mix, _ = build_poisoned_mix(BENIGN, HARMFUL, 100, 0.1, seed=3)
    assert {r.instruction for r in mix if r.meta["mix_role"] == "harmful"} == {
        f"harmful {i}" for i in range(10)
    }
    assert {r.instruction for r in mix if r.meta["mix_role"] == "benign"} == {
        f"benign {i}" for i in range(90)
    }


def test_same_seed_same_order_other_seed_other_order():
    first, _ = build_poisoned_mix(BENIGN, HARMFUL, 200, 0.1, seed=42)
    again, _ = build_poisoned_mix(BENIGN, HARMFUL, 200, 0.1, seed=42)
    other, _ = build_poisoned_mix(BENIGN, HARMFUL, 200, 0.1, seed=43)
    assert [r.instruction for r in first] == [r.instruction for r in again]
    assert [r.instruction for r in first] != [r.instruction for r in other]
    assert sorted(r.instruction for r in first) == sorted(r.instruction for r in other)


def test_inputs_are_not_modified():
    build_poisoned_mix(BENIGN, HARMFUL, 20, 0.5, seed=0)
    assert "mix_role" not in BENIGN[0].meta and "mix_role" not in HARMFUL[0].meta


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_ratio_out_of_range(ratio):
    with pytest.raises(SafeftError, match=rf"poison ratio must be in \[0, 1\], got {ratio}"):
        build_poisoned_mix(BENIGN, HARMFUL, 100, ratio, seed=0)


def test_negative_n():
    with pytest.raises(SafeftError, match=r"n must be >= 0, got -1"):
        build_poisoned_mix(BENIGN, HARMFUL, -1, 0.1, seed=0)


def test_not_enough_harmful_rows():
    with pytest.raises(
        SafeftError, match=r"needs 400 harmful rows \(n=1000 x p=0.4\), but the harmful data has only 300"
    ):
        build_poisoned_mix(BENIGN, HARMFUL, 1000, 0.4, seed=0)


def test_not_enough_benign_rows():
    with pytest.raises(
        SafeftError, match=r"needs 1800 benign rows \(n=2000 - 200 harmful\), but the task data has only 1000"
    ):
        build_poisoned_mix(BENIGN, HARMFUL, 2000, 0.1, seed=0)


# ----- overlaps ----------------------------------------------------------------------------------

EVAL = [Record("Harmful 1", ""), Record("  harmful   3 ")]  # same prompts after normalisation
ALIGNMENT = [Record("HARMFUL 4", "", "refusal")]


def test_overlaps_are_reported():
    _, report = build_poisoned_mix(
        BENIGN, HARMFUL, 100, 0.05, seed=0, eval_prompts=EVAL, alignment_harmful=ALIGNMENT
    )
    assert (report.eval_overlap, report.alignment_overlap, report.excluded) == (2, 1, 0)
    assert report.overlapping_eval_prompts == ["harmful 1", "harmful 3"]
    assert report.overlapping_alignment_prompts == ["harmful 4"]
    assert report.as_dict()["eval_overlap"] == 2


def test_strict_refuses_overlaps():
    with pytest.raises(
        SafeftError, match=r"2 harmful rows of the mix repeat an evaluation prompt and 1 repeat"
    ):
        build_poisoned_mix(
            BENIGN, HARMFUL, 100, 0.05, seed=0, eval_prompts=EVAL, alignment_harmful=ALIGNMENT, strict=True
        )


def test_exclude_overlaps_takes_the_next_rows():
    mix, report = build_poisoned_mix(
        BENIGN,
        HARMFUL,
        100,
        0.05,
        seed=0,
        eval_prompts=EVAL,
        alignment_harmful=ALIGNMENT,
        strict=True,
        exclude_overlaps=True,
    )
    harmful = {r.instruction for r in mix if r.meta["mix_role"] == "harmful"}
    assert harmful == {"harmful 0", "harmful 2", "harmful 5", "harmful 6", "harmful 7"}
    assert (report.eval_overlap, report.alignment_overlap, report.excluded) == (0, 0, 3)


def test_real_attack_data_overlaps_31_eval_prompts(shared_data):
    """PROVENANCE.md: 31 of the 200 attack prompts also occur among the 1,000 evaluation prompts."""
    attack = load_source("beavertails-attack", data_dir=shared_data)
    eval_prompts = load_source("beavertails-eval", data_dir=shared_data)
    benign = load_source("sst2", data_dir=shared_data, limit=1000)
    _, report = build_poisoned_mix(benign, attack, 1000, 0.2, seed=0, eval_prompts=eval_prompts)
    assert len(set(report.overlapping_eval_prompts)) == 31
    with pytest.raises(SafeftError, match=r"needs 200 harmful rows .* only 169 after skipping 31"):
        build_poisoned_mix(
            benign, attack, 1000, 0.2, seed=0, eval_prompts=eval_prompts, exclude_overlaps=True
        )
    mix, report = build_poisoned_mix(
        benign, attack, 1000, 0.1, seed=0, eval_prompts=eval_prompts, exclude_overlaps=True
    )
    assert report.eval_overlap == 0 and _roles(mix)["harmful"] == 100
