"""`safeft bench`: what each method costs, measured in one run on this machine.

- seconds per optimizer step and peak live-tensor memory of every method, as ratios to SFT (same
  model, LoRA, batch, sequence length; fp32 and bf16 autocast): see `safeft.bench.training`;
- seconds and peak live-tensor memory of each post-fine-tuning repair (SafeLoRA, Antidote), also
  in SFT steps: see `safeft.bench.repair`;
- generation throughput, batched vs one prompt at a time, and each judge's pairs/s: see
  `safeft.bench.evaluation`;
- optionally the wall time of `safeft quickstart`.

The result is written as Markdown (default docs/benchmarks.md) with a JSON of the raw numbers next
to it. Only ratios measured in the same run are comparable: the machine may be shared.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safeft.errors import SafeftError

log = logging.getLogger("safeft.bench")

JUDGES = ("keyword", "cpu")


def default_methods() -> tuple[str, ...]:
    """Every registered method, in registration order (SFT, the reference of the ratios, first)."""
    from safeft.methods import METHODS

    return tuple(METHODS)


@dataclass
class BenchSettings:
    """What one benchmark run measures (every method sees the same values)."""

    model: str = "smollm2-135m"
    batch_size: int = 8
    seq_len: int = 64
    lora_r: int = 32
    precisions: tuple[str, ...] = ("fp32", "bf16")
    reps: int = 3  # timed rounds per precision (after one warm-up round and one memory round)
    methods: tuple[str, ...] = field(default_factory=default_methods)
    prompts: int = 64  # per prompt set: harmful prompts, SST-2 rows
    max_new_tokens: int = 64  # harmful prompts
    task_max_new_tokens: int = 4  # SST-2: the label word
    generation_batch_size: int = 32
    judges: tuple[str, ...] = JUDGES
    data_dir: str | None = None
    quickstart: bool = False
    # Methods also stepped with the loss from the full logits (the "before" of the deferred output
    # layer, see safeft.methods.loss), in the same interleaved rounds.
    compare_full_logits: tuple[str, ...] = ()
    repair_calibration_rows: int = 64  # Antidote's calibration rows in the repair benchmark
    # Checkouts of the papers' repositories: their trainers stepped beside safeft's (only that is run).
    reference: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()  # with reference: each method also stepped these ways (VARIANTS)

    @classmethod
    def smoke(cls, model: str | None = None, **overrides: Any) -> BenchSettings:
        values = dict(
            model=model or "tiny-random-llama",
            batch_size=2,
            seq_len=16,
            lora_r=4,
            precisions=("fp32",),
            reps=2,
            prompts=4,
            max_new_tokens=4,
            task_max_new_tokens=2,
            generation_batch_size=4,
            judges=("keyword",),
            repair_calibration_rows=4,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class BenchResult:
    settings: BenchSettings
    machine: dict[str, Any]
    command: str
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # precision -> method -> numbers
    repairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # repair method -> numbers
    generation: dict[str, Any] = field(default_factory=dict)  # harmful prompts
    task_generation: dict[str, Any] = field(default_factory=dict)  # SST-2 rows
    judges: dict[str, Any] = field(default_factory=dict)
    quickstart: dict[str, Any] = field(default_factory=dict)
    # precision -> method -> {"reference": numbers, "safeft": numbers, ...}; see _reference
    reference: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_sources: dict[str, str] = field(default_factory=dict)  # method -> reference class and commit
    not_measured: dict[str, str] = field(default_factory=dict)  # precision -> why not
    seconds_total: float = 0.0


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = "not installed"
    from safeft import __version__

    return {
        "cpu": cpu,
        "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "safeft": __version__,
        "platform": platform.platform(),
    }


FULL_LOGITS = "/full-logits"  # suffix of a method stepped with the loss from the full logits

# Other ways to step a method, measured beside it in the same rounds (`<method>/<variant>`):
# the before/after of a time or memory choice.
VARIANTS = {
    "full-logits": "the loss from the full logits (train.output_layer: full)",
    "deferred": "the output layer deferred to the response tokens (train.output_layer: deferred)",
    "adamw-foreach": "AdamW's foreach (multi-tensor) kernels instead of the fused one",
    "adamw-forloop": "AdamW's tensor-by-tensor loop instead of the fused kernel",
    "checkpointed": "train.checkpointing: on (the deferred output layer's chunks and the blocks the method does not "
    "train recomputed in backward) instead of the default off",
}


def variant_trainer(trainer_cls: type, variant: str) -> type:
    """`trainer_cls` stepping the `variant` way (a subclass; nothing else changes)."""
    from transformers import Trainer

    from safeft.methods.loss import LossPath

    loss_path = {"full-logits": LossPath("full"), "deferred": LossPath("deferred")}.get(variant)

    class Variant(trainer_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            if loss_path is not None:
                kwargs["loss_path"] = loss_path
            if variant == "checkpointed":
                kwargs["checkpointing"] = "on"
            super().__init__(*args, **kwargs)

        @staticmethod
        def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, Any]:
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
            if variant.startswith("adamw-"):
                kwargs = {k: v for k, v in kwargs.items() if k != "fused"}
                kwargs["foreach"] = variant == "adamw-foreach"
            return cls, kwargs

    Variant.__name__ = f"{trainer_cls.__name__}_{variant.replace('-', '_')}"
    return Variant


def with_variants(
    methods: tuple[str, ...], compared: dict[str, tuple[str, ...]]
) -> tuple[tuple[str, ...], dict]:
    """The methods plus `<m>/<variant>` for each variant's methods, and the registry that builds them."""
    import dataclasses

    from safeft.methods import METHODS

    registry: dict[str, Any] = dict(METHODS)
    names = list(methods)
    for variant, which in compared.items():
        if variant not in VARIANTS:
            raise SafeftError(f"bench: unknown variant {variant!r}; available: {', '.join(VARIANTS)}")
        for name in which:
            spec = METHODS[name]
            registry[f"{name}/{variant}"] = dataclasses.replace(
                spec, trainer_cls=variant_trainer(spec.trainer_cls, variant)
            )
            names.append(f"{name}/{variant}")
    return tuple(names), registry


def with_full_logits_variants(
    methods: tuple[str, ...], compared: tuple[str, ...]
) -> tuple[tuple[str, ...], dict]:
    """The methods plus `<m>/full-logits` for each compared one, and the registry that builds them."""
    return with_variants(methods, {"full-logits": compared} if compared else {})


def _training(result: BenchResult, model: Any, tok: Any) -> None:
    from safeft.bench.training import StepSetup, measure_methods

    s = result.settings
    methods, registry = with_full_logits_variants(s.methods, s.compare_full_logits)
    for precision in s.precisions:
        setup = StepSetup(batch_size=s.batch_size, seq_len=s.seq_len, lora_r=s.lora_r, precision=precision)
        costs = measure_methods(methods, model, tok.pad_token_id, setup, s.reps, registry=registry)
        ref = costs.get("sft")
        table = {}
        for name, c in costs.items():
            row: dict[str, Any] = {
                "seconds": asdict(c.seconds),
                "memory": asdict(c.memory),
            }
            if ref is not None:
                row["time_ratio"] = c.seconds.median / ref.seconds.median
                # Spread of the ratio: per-round ratios (each round ran every method once).
                per_round = sorted(a / b for a, b in zip(c.seconds.values, ref.seconds.values, strict=True))
                row["time_ratio_min"], row["time_ratio_max"] = per_round[0], per_round[-1]
                row["memory_ratio"] = c.memory.peak_bytes / ref.memory.peak_bytes
                row["training_memory_ratio"] = (c.memory.peak_bytes - _weights(model)) / (
                    ref.memory.peak_bytes - _weights(model)
                )
            table[name] = row
        result.training[precision] = table


def _row(cost: Any, ref: Any) -> dict[str, Any]:
    """One step's numbers; with `ref` (the reference's cost in the same rounds) its ratios to it."""
    row: dict[str, Any] = {"seconds": asdict(cost.seconds), "memory": asdict(cost.memory)}
    if ref is not None:
        row["time_ratio"] = cost.seconds.median / ref.seconds.median
        # Spread of the ratio: per-round ratios (each round ran every step once).
        per_round = sorted(a / b for a, b in zip(cost.seconds.values, ref.seconds.values, strict=True))
        row["time_ratio_min"], row["time_ratio_max"] = per_round[0], per_round[-1]
        row["memory_ratio"] = cost.memory.peak_bytes / ref.memory.peak_bytes
        if cost.cpu_seconds is not None and ref.cpu_seconds is not None:
            row["cpu_time_ratio"] = cost.cpu_seconds.median / ref.cpu_seconds.median
            per_round = sorted(
                a / b for a, b in zip(cost.cpu_seconds.values, ref.cpu_seconds.values, strict=True)
            )
            row["cpu_time_ratio_min"], row["cpu_time_ratio_max"] = per_round[0], per_round[-1]
    if cost.cpu_seconds is not None:
        row["cpu_seconds"] = asdict(cost.cpu_seconds)
    return row


REFERENCE_METHODS = (
    "sft",
    "vaccine",
    "booster",
    "tvaccine",
    "repnoise",
)  # those a reference trainer exists for


def _reference(result: BenchResult, model: Any, tok: Any) -> None:
    """The reference trainers beside safeft's steps: per method a group (reference, safeft, variants),
    every group's steps back to back in each round, who goes first alternating from round to round."""
    from safeft.bench.reference import (
        REFERENCE,
        alternating_groups,
        find_reference_trainers,
        reference_registry,
    )
    from safeft.bench.training import StepSetup, measure_methods
    from safeft.hardware import native_bf16

    s = result.settings
    found = find_reference_trainers(s.reference)
    wanted = [m for m in s.methods if m in found]
    if not wanted:
        raise SafeftError(
            f"bench --reference: none of the methods {', '.join(s.methods)} has a reference trainer in "
            f"{', '.join(s.reference)} (found: {', '.join(found) or 'none'})"
        )
    result.reference_sources = {m: found[m].source for m in wanted}
    compared = {v: tuple(wanted) for v in s.variants}
    if s.compare_full_logits:
        compared.setdefault("full-logits", tuple(m for m in wanted if m in s.compare_full_logits))
    methods_, registry = with_variants(tuple(wanted), compared)
    registry = reference_registry({m: found[m] for m in wanted}, registry)
    groups = [[m + REFERENCE, m, *(v for v in methods_ if v.startswith(m + "/"))] for m in wanted]
    size = max(len(g) for g in groups)
    if any(len(g) != size for g in groups):
        raise SafeftError(
            "bench --reference: --compare-full-logits must name every method compared (or none)"
        )
    for precision in s.precisions:
        if precision == "bf16" and not native_bf16():
            result.not_measured[precision] = (
                "not measurable here: this machine has no native bf16 (no AVX-512 bf16 / AMX), so bf16 "
                "would be emulated, many times slower than fp32, for both sides"
            )
            continue
        setup = StepSetup(batch_size=s.batch_size, seq_len=s.seq_len, lora_r=s.lora_r, precision=precision)
        costs = measure_methods(
            [name for g in groups for name in g],
            model,
            tok.pad_token_id,
            setup,
            s.reps,
            registry=registry,
            order=alternating_groups(size),
        )
        result.reference[precision] = {
            g[1]: {
                (
                    "reference"
                    if name.endswith(REFERENCE)
                    else "safeft"
                    if name == g[1]
                    else name[len(g[1]) + 1 :]
                ): _row(costs[name], None if name.endswith(REFERENCE) else costs[g[0]])
                for name in g
            }
            for g in groups
        }


def _repairs(result: BenchResult, model: Any, tok: Any) -> None:
    from safeft.bench.repair import measure_repairs
    from safeft.bench.training import StepSetup

    s = result.settings
    setup = StepSetup(batch_size=s.batch_size, seq_len=s.seq_len, lora_r=s.lora_r, precision="fp32")
    result.repairs = measure_repairs(model, tok.pad_token_id, setup, s.reps, s.repair_calibration_rows)
    sft = result.training.get("fp32", {}).get("sft")
    for row in result.repairs.values():
        if sft:  # the repair's time in fp32 SFT steps of the same run
            row["sft_steps"] = row["seconds"]["median"] / sft["seconds"]["median"]


def _weights(model: Any) -> int:
    """Bytes of the frozen base weights (the part of every method's peak that no method changes)."""
    seen: dict[int, int] = {}
    for p in list(model.parameters()) + list(model.buffers()):
        st = p.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _evaluation(result: BenchResult, model: Any, tok: Any) -> None:
    from safeft.bench.evaluation import eval_prompts, judge_throughput, task_prompts

    s = result.settings
    prompts, where = eval_prompts(s.prompts, s.data_dir)
    result.generation, answers = _generation(
        model, tok, prompts, where, s.max_new_tokens, s.generation_batch_size
    )
    rows, where = task_prompts(s.prompts, s.data_dir)
    result.task_generation, _ = _generation(
        model, tok, rows, where, s.task_max_new_tokens, s.generation_batch_size
    )
    for name, t in judge_throughput(s.judges, prompts, answers).items():
        result.judges[name] = (
            {"error": t}
            if isinstance(t, str)
            else {"pairs": t.items, "seconds": t.seconds, "pairs_per_second": t.per_second}
        )


def _generation(
    model: Any, tok: Any, prompts: list[str], where: str, max_new_tokens: int, batch_size: int
) -> tuple[dict[str, Any], list[str]]:
    """The generation table of one prompt set, and the default engine's answers."""
    from safeft.bench.evaluation import decode_batching_ceiling, generation_throughput

    speeds, answers, same = generation_throughput(model, tok, prompts, max_new_tokens, batch_size)
    # The ceiling's cached context: a typical prompt plus half the answer, the mean a decode step sees.
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
    table = {
        "prompts": where,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "identical_answers": same,
        "batching_ceiling": decode_batching_ceiling(
            model, min(batch_size, len(prompts)), round(prompt_tokens + max_new_tokens / 2)
        ),
        **{
            k: {
                "answers": v.items,
                "seconds": v.seconds,
                "answers_per_second": v.per_second,
                "speedup": v.per_second / speeds["one_at_a_time"].per_second,
            }
            for k, v in speeds.items()
        },
    }
    return table, answers


def _quickstart(result: BenchResult, output: Path) -> None:
    """Time `safeft quickstart` (with --quickstart), else read the time of a finished run if one exists."""
    from safeft.pipeline.quickstart import run_quickstart

    s = result.settings
    runs = output.parent.parent / "runs" / "bench-quickstart"
    if s.quickstart:
        start = time.perf_counter()
        code = run_quickstart(output=runs, data_dir=s.data_dir)
        result.quickstart = {
            "seconds": time.perf_counter() - start,
            "exit_code": code,
            "runs": str(runs),
            "measured": "now",
        }
        return
    finished = Path("runs/quickstart")
    walls = (
        [json.loads(m.read_text()).get("wall_time_s") for m in sorted(finished.glob("**/metrics.json"))]
        if finished.is_dir()
        else []
    )
    walls = [w for w in walls if isinstance(w, (int, float))]
    if walls:
        result.quickstart = {
            "seconds": sum(walls),
            "runs": str(finished),
            "measured": f"earlier: sum of the wall_time_s of the {len(walls)} finished stages in {finished}/ (not re-run; pass --quickstart to time it now)",
        }
    else:
        result.quickstart = {"measured": "not run (pass --quickstart to time it; it takes minutes)"}


def run_bench(
    model: str | None = None,
    smoke: bool = False,
    output: str | Path = "docs/benchmarks.md",
    *,
    data_dir: str | None = None,
    quickstart: bool = False,
    reps: int | None = None,
    seq_len: int | None = None,
    precisions: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    threads: int | None = None,
    compare_full_logits: tuple[str, ...] | None = None,
    reference: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
) -> int:
    """Run the benchmark, write `output` (Markdown) and `output` with suffix .json; return 0."""
    from safeft.bench.report import write_reference_section, write_report
    from safeft.methods import METHODS
    from safeft.models import load_model

    overrides: dict[str, Any] = {
        k: v
        for k, v in dict(
            reps=reps,
            seq_len=seq_len,
            precisions=precisions,
            methods=methods,
            quickstart=quickstart,
            compare_full_logits=compare_full_logits,
            reference=reference,
            variants=variants,
        ).items()
        if v not in (None, False)
    }
    overrides["data_dir"] = data_dir or os.environ.get("SAFEFT_DATA_DIR") or None
    settings = (
        BenchSettings.smoke(model, **overrides)
        if smoke
        else BenchSettings(model=model or "smollm2-135m", **overrides)
    )
    unknown = [m for m in settings.methods + settings.compare_full_logits if m not in METHODS]
    if unknown:
        raise SafeftError(f"bench: unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    not_run = [m for m in settings.compare_full_logits if m not in settings.methods]
    if not_run:
        raise SafeftError(
            f"bench: --compare-full-logits {', '.join(not_run)}: not among the methods benchmarked"
        )
    if settings.variants and not settings.reference:
        raise SafeftError(
            "bench: --compare goes with --reference (the full benchmark has --compare-full-logits)"
        )
    bad_variants = [v for v in settings.variants if v not in VARIANTS]
    if bad_variants:
        raise SafeftError(
            f"bench: unknown --compare {', '.join(bad_variants)}; available: {', '.join(VARIANTS)}"
        )
    if settings.reference:
        if methods is None:
            settings.methods = tuple(m for m in REFERENCE_METHODS if m in settings.methods)
        if precisions is None:
            settings.precisions = ("fp32", "bf16")
    elif "sft" not in settings.methods:
        raise SafeftError("bench: the methods must include 'sft' (every ratio is to SFT)")
    bad = [p for p in settings.precisions if p not in ("fp32", "bf16")]
    if bad:
        raise SafeftError(f"bench: precision(s) {', '.join(bad)}; expected fp32 and/or bf16")
    if settings.reps < 1:
        raise SafeftError(f"bench: reps must be >= 1, got {settings.reps}")

    if threads is not None:
        import torch

        if threads < 1:
            raise SafeftError(f"bench: threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    output = Path(output)
    start = time.perf_counter()
    result = BenchResult(
        settings,
        machine_info(),
        "safeft " + shlex.join(sys.argv[1:])
        if sys.argv[0].endswith("safeft")
        else f"run_bench(model={settings.model!r}, smoke={smoke})",
    )
    log.info("bench: loading %s", settings.model)
    model_obj, tok = load_model(settings.model)
    if settings.reference:
        _reference(result, model_obj, tok)
        result.seconds_total = time.perf_counter() - start
        if hasattr(os, "getloadavg"):
            result.machine["load_average_at_end"] = list(os.getloadavg())
        write_reference_section(result, output)
        log.info("bench: wrote the reference comparison into %s (%.0f s)", output, result.seconds_total)
        return 0
    _training(result, model_obj, tok)
    if settings.precisions:  # --precisions none: evaluation only
        _repairs(result, model_obj, tok)
    _evaluation(result, model_obj, tok)
    _quickstart(result, output)
    result.seconds_total = time.perf_counter() - start
    write_report(result, output)
    log.info("bench: wrote %s and %s (%.0f s)", output, output.with_suffix(".json"), result.seconds_total)
    return 0


__all__ = ["run_bench", "BenchSettings", "BenchResult"]
