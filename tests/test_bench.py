"""`safeft bench --smoke`: the structure of the report (never absolute times: the machine is shared)."""

from __future__ import annotations

import json

from safeft.bench import default_methods, run_bench
from safeft.cli import main
from safeft.methods import METHODS
from safeft.repair import REPAIRS


def test_smoke_bench_writes_every_method_with_positive_ratios(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"

    assert run_bench(smoke=True, output=out) == 0

    data = json.loads(out.with_suffix(".json").read_text())
    assert default_methods() == tuple(METHODS)
    table = data["training"]["fp32"]
    assert set(table) == set(METHODS)
    for name, row in table.items():
        assert row["time_ratio"] > 0 and row["memory_ratio"] > 0, name
        assert row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
        assert row["memory"]["peak_bytes"] >= row["memory"]["state_bytes"] > 0
    assert table["sft"]["time_ratio"] == 1.0 and table["sft"]["memory_ratio"] == 1.0
    for gen in (data["generation"], data["task_generation"]):  # harmful prompts, SST-2 rows
        for path in ("batched_prefix", "batched_loop", "one_at_a_time"):
            assert gen[path]["answers_per_second"] > 0, path
        assert set(gen["identical_answers"]) == {"batched_prefix", "batched_loop"}
        assert 0 < gen["batching_ceiling"]["ceiling"]
    assert data["task_generation"]["max_new_tokens"] < data["generation"]["max_new_tokens"]
    assert data["judges"]["keyword"]["pairs_per_second"] > 0
    assert data["machine"]["torch_threads"] >= 1
    assert set(data["repairs"]) == set(REPAIRS)  # every repair method, timed in SFT steps of the same run
    for name, row in data["repairs"].items():
        assert row["seconds"]["median"] > 0 and row["sft_steps"] > 0 and row["transient_peak_bytes"] > 0, name

    text = out.read_text()
    assert "# Benchmarks" in text and "live CPU tensor bytes" in text
    assert "### Harmful prompts" in text and "### SST-2" in text and "| batched prefix |" in text
    assert "Ceiling from batching on this machine" in text
    for name in [*METHODS, *REPAIRS]:
        assert f"| {name} |" in text


def test_bench_cli_takes_a_subset_of_methods(tmp_path):
    out = tmp_path / "b.md"

    assert main(["bench", "--smoke", "--methods", "sft,booster", "--reps", "1", "--output", str(out)]) == 0

    table = json.loads(out.with_suffix(".json").read_text())["training"]["fp32"]
    assert list(table) == ["sft", "booster"]


def test_bench_needs_sft_as_the_reference(tmp_path):
    assert main(["bench", "--smoke", "--methods", "booster", "--output", str(tmp_path / "b.md")]) == 2


def test_full_logits_comparison_runs_each_method_twice_and_the_deferred_loss_uses_less_memory(tmp_path):
    out = tmp_path / "b.md"

    args = ["bench", "--smoke", "--methods", "sft,vaccine", "--compare-full-logits", "sft,vaccine"]
    assert main([*args, "--reps", "1", "--output", str(out)]) == 0

    table = json.loads(out.with_suffix(".json").read_text())["training"]["fp32"]
    assert list(table) == ["sft", "vaccine", "sft/full-logits", "vaccine/full-logits"]
    for name in ("sft", "vaccine"):  # the full logits (batch x length x 30,522) are never formed
        assert table[name]["memory"]["peak_bytes"] < table[name + "/full-logits"]["memory"]["peak_bytes"]
    text = out.read_text()
    assert "## The deferred output layer, before → after" in text and "| fp32 | vaccine |" in text
    assert "## Against the bar" in text


def test_full_logits_comparison_needs_the_method_benchmarked(tmp_path):
    assert (
        main(
            [
                "bench",
                "--smoke",
                "--methods",
                "sft",
                "--compare-full-logits",
                "booster",
                "--output",
                str(tmp_path / "b.md"),
            ]
        )
        == 2
    )


class _TimedStepModel:
    """A stand-in decoder whose step costs `fixed + per_row * rows` CPU seconds and fills a real KV cache."""

    def __init__(self, fixed: float, per_row: float):
        from transformers import LlamaConfig

        self.config = LlamaConfig(vocab_size=32, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
        self.fixed, self.per_row = fixed, per_row
        self.steps: list[tuple[int, int]] = []  # (rows, tokens already cached) of every call

    def __call__(self, input_ids, past_key_values, use_cache):
        import time

        import torch

        rows, new = input_ids.shape
        self.steps.append((rows, past_key_values.get_seq_length()))
        kv = torch.zeros(rows, 1, new, 4)
        past_key_values.update(kv, kv, 0)
        busy_until = time.process_time() + self.fixed + self.per_row * rows  # CPU work, not sleep:
        while time.process_time() < busy_until:  # the CPU-time ceiling must see it too
            pass


def test_batching_ceiling_is_batch_size_when_a_step_costs_the_same_for_any_rows():
    from safeft.bench.evaluation import decode_batching_ceiling

    model = _TimedStepModel(fixed=0.02, per_row=0.0)
    c = decode_batching_ceiling(model, batch_size=8, context_tokens=5, rounds=3)

    assert 7.0 < c["ceiling_cpu_time"] < 9.0  # 8 rows for the price of one
    # every timed step sees the same cached context: the cache is cropped back after each step
    assert {cached for _, cached in model.steps[2:]} == {5}


def test_batching_ceiling_is_one_when_a_step_costs_the_same_per_row():
    from safeft.bench.evaluation import decode_batching_ceiling

    c = decode_batching_ceiling(
        _TimedStepModel(fixed=0.0, per_row=0.004), batch_size=8, context_tokens=5, rounds=3
    )

    assert 0.8 < c["ceiling_cpu_time"] < 1.25
