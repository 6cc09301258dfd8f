"""The benchmark's Markdown page and JSON, generated from a `BenchResult` (never typed by hand)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safeft.io import atomic_write_text


def method_note(name: str) -> str:
    """The work of one step, as the method's registry entry declares it (`MethodSpec.passes`)."""
    from safeft.methods import METHODS

    base = name.split("/")[0]  # "vaccine/full-logits" is vaccine stepped another way
    return METHODS[base].passes if base in METHODS else ""


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _training_table(precision: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"#### {precision}",
        "",
        "| method | passes | s/step median | IQR | time × SFT (min–max over rounds) | peak MiB | peak × SFT | above weights × SFT | state MiB | step transient MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        sec, mem = r["seconds"], r["memory"]
        ratio = (
            f"{r['time_ratio']:.2f}× ({r['time_ratio_min']:.2f}–{r['time_ratio_max']:.2f})"
            if "time_ratio" in r
            else "–"
        )
        lines.append(
            f"| {name} | {method_note(name)} | {sec['median']:.3f} | {sec['q1']:.3f}–{sec['q3']:.3f} | {ratio} "
            f"| {_mb(mem['peak_bytes'])} | {r.get('memory_ratio', float('nan')):.3f}× | {r.get('training_memory_ratio', float('nan')):.3f}× "
            f"| {_mb(mem['state_bytes'])} | {_mb(mem['transient_peak_bytes'])} |"
        )
    return lines + [""]


# The targets of the benchmark issue, measured against the reference implementations on these machines.
BAR = (
    # (what, method, quantity, limit); quantities: time = s/step ÷ SFT's, peak = peak memory ÷ SFT's,
    # vs_vaccine = memory above the frozen weights ÷ Vaccine's
    ("Booster step time ≤ 3.05× SFT", "booster", "time", 3.05),
    ("Booster peak memory ≤ 1.02× SFT", "booster", "peak", 1.02),
    ("Vaccine step time ≤ 2.05× SFT", "vaccine", "time", 2.05),
    ("T-Vaccine step time ≤ 2.4× SFT", "tvaccine", "time", 2.4),
    ("T-Vaccine training memory ≤ 0.65× Vaccine's", "tvaccine", "vs_vaccine", 0.65),
)


def _bar_value(rows: dict[str, dict[str, Any]], method: str, quantity: str) -> float | None:
    r = rows.get(method)
    if r is None:
        return None
    if quantity == "time":
        return r.get("time_ratio")
    if quantity == "peak":
        return r.get("memory_ratio")
    vaccine = rows.get("vaccine", {}).get("training_memory_ratio")
    mine = r.get("training_memory_ratio")
    return mine / vaccine if mine is not None and vaccine else None


def _bar_table(training: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    precisions = list(training)
    lines = [
        "## Against the bar",
        "",
        "The targets set against the reference implementations (measured on these machines: Vaccine 2.15×, Booster "
        "3.31× SFT's step time, T-Vaccine 2.49×). *Training memory* is the live-tensor peak above the frozen base "
        "weights (adapter, gradients, optimizer state, activations), i.e. what training adds to the model itself.",
        "",
        "| target | " + " | ".join(precisions) + " |",
        "|---|" + "---|" * len(precisions),
    ]
    for what, method, quantity, limit in BAR:
        cells = []
        for precision in precisions:
            value = _bar_value(training[precision], method, quantity)
            cells.append("–" if value is None else f"{value:.3f} {'✓' if value <= limit else '✗'}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return lines + [""]


def _full_logits_table(training: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Before/after of the deferred output layer: each compared method against its full-logits twin."""
    suffix = "/full-logits"
    lines = [
        "## The deferred output layer, before → after (same run)",
        "",
        "Before: the loss from the model's full logits (batch × length × vocabulary). After: the output layer "
        "runs only on the response positions, a chunk at a time, recomputed in backward (`safeft.methods.loss`). "
        "Same trainer, same rows, same rounds.",
        "",
        "| precision | method | s/step before → after | peak MiB before → after | above weights × SFT before → after |",
        "|---|---|---|---|---|",
    ]
    for precision, rows in training.items():
        for name, before in rows.items():
            if not name.endswith(suffix) or name.removesuffix(suffix) not in rows:
                continue
            after = rows[name.removesuffix(suffix)]
            lines.append(
                f"| {precision} | {name.removesuffix(suffix)} "
                f"| {before['seconds']['median']:.3f} → {after['seconds']['median']:.3f} "
                f"| {_mb(before['memory']['peak_bytes'])} → {_mb(after['memory']['peak_bytes'])} "
                f"| {before.get('training_memory_ratio', float('nan')):.3f} → {after.get('training_memory_ratio', float('nan')):.3f} |"
            )
    return lines + [""] if len(lines) > 6 else []


def render(result: Any) -> str:
    s, m = result.settings, result.machine
    out = [
        "# Benchmarks",
        "",
        f"Generated by `safeft bench` on {time.strftime('%Y-%m-%d %H:%M')} in {result.seconds_total / 60:.1f} min — do not edit by hand; "
        "re-run the command below. Raw numbers: the JSON file next to this one.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({', '.join(m['cpu_features']) or 'no AVX-512/AMX'}), {m['logical_cores']} logical cores, "
        f"torch threads {m['torch_threads']} (`--threads`; on a loaded machine one thread avoids stalls at every "
        f"OpenMP barrier); GPU: {m['gpu'] or 'none'}",
        f"- load average when the run started: {', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or [])} "
        "(a shared machine: only ratios from the same run are comparable)",
        f"- Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, safeft {m['safeft']}",
        "",
        "## Command",
        "",
        f"    {result.command}",
        "",
        f"Model `{s.model}`, LoRA r={s.lora_r} on q/k/v, batch {s.batch_size} × {s.seq_len} tokens (equal-length rows, "
        "harmful/alignment batches of the same size), AdamW, gradient clipping 1.0.",
        "",
        "## Training cost per optimizer step",
        "",
        f"Each method's own Trainer runs the step as `Trainer.train` does (`training_step`, clipping, `optimizer.step()`, "
        f"scheduler, `zero_grad`); bf16 is Accelerate's autocast with fp32 weights. Per precision: one warm-up round, one memory "
        f"round, then {s.reps} timed rounds in which every method steps once, the order rotated each round (machine noise falls "
        "on all methods alike). Time × SFT is the ratio of medians; min–max are the per-round ratios. T-Vaccine's probe "
        "(every 200 steps) and redraw (every 20) fall in the warm-up step, so its time is the steady state.",
        "",
        (
            f"Measured on the GPU ({m['gpu']}): step times between `torch.cuda.synchronize()` calls; memory is "
            "`torch.cuda.max_memory_allocated` during one steady-state step plus what set-up and warm-up left allocated. "
            if m["gpu"]
            else ""
        )
        + "On CPU, memory is peak **live CPU tensor bytes** during one steady-state step: the bytes of every tensor alive before the step "
        "that the method's set-up and warm-up step added (model copy, adapter, optimizer moments, the method's buffers; found with "
        "`gc`) plus the peak of the running sum of the allocator's allocation/free events during the step (PyTorch profiler, "
        "`profile_memory=True`). Allocator caches, Python objects and library workspaces are not counted; on a GPU the same "
        "quantity is `torch.cuda.max_memory_allocated`. *Above weights* subtracts the frozen base weights, which are the same "
        "for every method.",
        "",
    ]
    for precision, rows in result.training.items():
        out += _training_table(precision, rows)
    if result.training:
        out += _bar_table(result.training)
        out += _full_logits_table(result.training)

    if result.repairs:
        out += [
            "## Post-fine-tuning repair (one repair of the whole adapter)",
            "",
            f"`safeft repair` edits the fine-tuned adapter once, after training: the cost is one call, not a cost per step. Each "
            f"method repairs a fresh copy of the model with a LoRA adapter (r={s.lora_r}, seeded random B); SafeLoRA's aligned "
            f"model is the base with a seeded rank-{s.lora_r} change of each adapted weight; Antidote runs its calibration rows "
            f"({s.repair_calibration_rows} × {s.seq_len} tokens, batch {s.batch_size}) through the model. fp32; median of "
            f"{s.reps} repairs, each on a fresh copy; memory is the peak of live CPU tensor bytes the repair allocates (profiler, "
            "as above). Loading the models from disk, which `safeft repair` also does, is not included. *SFT steps* = repair "
            "seconds ÷ the fp32 SFT step above.",
            "",
            "| repair | seconds | SFT steps | calibration rows | peak added memory (MiB) |",
            "|---|---|---|---|---|",
        ]
        for name, r in result.repairs.items():
            steps = f"{r['sft_steps']:.1f}" if "sft_steps" in r else "—"
            out.append(
                f"| {name} | {r['seconds']['median']:.2f} | {steps} | {r['calibration_rows'] or '—'} | "
                f"{_mb(r['transient_peak_bytes'])} |"
            )
        out.append("")

    out += ["## Evaluation throughput", ""]
    for title, g in (("Harmful prompts", result.generation), ("SST-2", result.task_generation)):
        if g:
            out += [f"### {title}", "", *_generation_table(g)]
    if result.judges:
        out += [
            "Judges on the same (prompt, batched answer) pairs, best of 3, weights loaded beforehand:",
            "",
            "| judge | pairs/s |",
            "|---|---|",
        ]
        for name, j in result.judges.items():
            value = j["error"] if "error" in j else f"{j['pairs_per_second']:.1f}"
            out.append(f"| {name} | {value} |")
        out.append("")

    q = result.quickstart
    out += ["## Quickstart", ""]
    out.append(
        f"`safeft quickstart`: {q['seconds'] / 60:.1f} min ({q['measured']})."
        if "seconds" in q
        else f"`safeft quickstart`: {q['measured']}."
    )
    out.append("")
    return "\n".join(out)


def _generation_table(g: dict[str, Any]) -> list[str]:
    paths = [k for k in ("batched_prefix", "batched_loop", "batched_hf", "one_at_a_time") if k in g]
    return [
        f"{g['prompts']}, greedy, at most {g['max_new_tokens']} new tokens, batch {g['batch_size']} "
        "(`generate_answers`: length-sorted batches, KV cache, finished rows leave the batch): `engine prefix` "
        "(the default: the prompts' common first tokens computed once, the rest prefilled in length buckets) "
        "and `engine loop` (one left-padded prefill); one at a time = `generate_one_at_a_time` (transformers' "
        "`generate`, one prompt per call). Interleaved halves (every path on the first half, then on the "
        "second), one run. Identical answers to one at a time: "
        + ", ".join(
            f"{k.replace('_', ' ')} {n} of {g[k]['answers']}" for k, n in g["identical_answers"].items()
        )
        + ".",
        "",
        "| generation | answers | seconds | answers/s | × one at a time |",
        "|---|---|---|---|---|",
        *(
            f"| {k.replace('_', ' ')} | {g[k]['answers']} | {g[k]['seconds']:.1f} | "
            f"{g[k]['answers_per_second']:.2f} | {g[k]['speedup']:.1f}× |"
            for k in paths
        ),
        "",
        *_ceiling_lines(g.get("batching_ceiling")),
    ]


def _ceiling_lines(c: dict[str, Any] | None) -> list[str]:
    """What batching alone can buy on this machine (`decode_batching_ceiling`), measured in the same run."""
    if not c:
        return []
    return [
        f"Ceiling from batching on this machine: one decoding step with {c['context_tokens']} cached tokens "
        f"takes {c['step_seconds_one_row'] * 1e3:.1f} ms for one row and {c['step_seconds_batch'] * 1e3:.1f} ms "
        f"for {c['batch_size']} rows, so batching alone can make an answer at most "
        f"**{c['ceiling']:.1f}×** faster than one at a time ({c['ceiling_cpu_time']:.1f}× in CPU time; sharing the "
        "prompts' prefix saves prefill on top).",
        "",
    ]


# The reference comparison is its own run (`safeft bench --reference`): its section of the page sits
# between these markers, is replaced by the next reference run and kept by a run of the rest.
REFERENCE_BEGIN = "<!-- safeft bench --reference: begin -->"
REFERENCE_END = "<!-- safeft bench --reference: end -->"


def _section(text: str) -> str:
    if REFERENCE_BEGIN in text and REFERENCE_END in text:
        return text[text.index(REFERENCE_BEGIN) : text.index(REFERENCE_END) + len(REFERENCE_END)]
    return ""


def write_report(result: Any, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    kept = _section(output.read_text()) if output.is_file() else ""
    atomic_write_text(output, render(result) + (f"\n{kept}\n" if kept else ""))
    atomic_write_text(output.with_suffix(".json"), json.dumps(asdict(result), indent=2, default=str) + "\n")


def reference_json(output: Path) -> Path:
    return output.with_suffix(".reference.json")


def write_reference_section(result: Any, output: Path) -> None:
    """Put the reference comparison into `output` (replacing an earlier one) and its numbers into
    `<output>.reference.json`; the rest of an existing page is left as it is."""
    output.parent.mkdir(parents=True, exist_ok=True)
    section = "\n".join(
        [REFERENCE_BEGIN, *render_reference(result, reference_json(output).name), REFERENCE_END]
    )
    text = output.read_text() if output.is_file() else "# Benchmarks\n"
    old = _section(text)
    text = text.replace(old, section) if old else text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(output, text)
    atomic_write_text(reference_json(output), json.dumps(asdict(result), indent=2, default=str) + "\n")


def _ratio(row: dict[str, Any], what: str = "time_ratio") -> str:
    if what not in row:
        return "–"
    return f"**{row[what]:.2f}** ({row[what + '_min']:.2f}–{row[what + '_max']:.2f})"


def _cpu(row: dict[str, Any]) -> str:
    return f"{row['cpu_seconds']['median']:.2f}" if "cpu_seconds" in row else "–"


def render_reference(result: Any, json_name: str) -> list[str]:
    s, m = result.settings, result.machine
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"] or [])
    end = m.get("load_average_at_end")
    # Other processes' load: the 1-minute average before the run, and at its end minus the run's own threads.
    others = (m["load_average_at_start"] or [])[:1] + [x - m["torch_threads"] for x in (end or [])[:1]]
    busy = [x for x in others if x > 0.5 * m["logical_cores"]]
    load += (f"; at the end: {', '.join(f'{x:.1f}' for x in end)}" if end else "") + (
        f" — **measured under load** (more runnable processes than half the {m['logical_cores']} cores): "
        "wall times are inflated and noisy, the CPU-time ratios are the fairer comparison"
        if busy
        else ""
    )
    out = [
        "## Against the papers' reference trainers (same run, side by side)",
        "",
        f"Generated by `safeft bench --reference` on {time.strftime('%Y-%m-%d %H:%M')} in {result.seconds_total / 60:.1f} min "
        f"(raw numbers: `{json_name}` next to this page):",
        "",
        f"    {result.command}",
        "",
        f"Model `{s.model}`, LoRA r={s.lora_r} on q/k/v, batch {s.batch_size} × {s.seq_len} tokens (harmful batches of the same "
        "size), the same AdamW (`TrainingArguments`' default optimizer), gradient clipping 1.0, the same method "
        "hyper-parameters on both sides. The reference trainer classes are imported unchanged from the checkouts at run time "
        "(`safeft.bench.reference`: our compatibility shims for transformers 5, no reference code in this repository) and each "
        "one steps exactly as `Trainer.train` would, like safeft's (with its defaults: `train.checkpointing` auto, i.e. off "
        "without a memory budget, and `train.output_layer` auto). Per precision: one warm-up round, one memory round, then "
        f"{s.reps} timed rounds; in each round a method's reference and safeft steps run back to back, who goes first "
        "alternating from round to round. *safeft ÷ reference* is the ratio of the median seconds per step, with the range "
        "of the per-round ratios; the same for the CPU seconds the process spent in each step (on a shared CPU the "
        "steadier measure: wall time also waits for other processes; on a GPU only wall time counts); memory is peak "
        "live tensor bytes of one steady-state step (as above; on a GPU `torch.cuda.max_memory_allocated`).",
        "",
        f"Machine: {m['cpu']} ({', '.join(m['cpu_features']) or 'no AVX-512/AMX'}), {m['logical_cores']} logical cores, torch "
        f"threads {m['torch_threads']}, GPU {m['gpu'] or 'none'}; torch {m['torch']}, transformers {m['transformers']}, "
        f"peft {m['peft']}. Load average at the start: {load}. A shared machine: only ratios within this run compare.",
        "",
        "| method | reference trainer | reference s/step (CPU s) | safeft s/step (CPU s) | safeft ÷ reference, wall (per-round range) "
        "| safeft ÷ reference, CPU time (range) | peak MiB, reference / safeft |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for precision, rows in result.reference.items():
        for method, r in rows.items():
            ref, ours = r["reference"], r["safeft"]
            out.append(
                f"| {method} ({precision}) | {result.reference_sources.get(method, '')} "
                f"| {ref['seconds']['median']:.2f} ({_cpu(ref)}) | {ours['seconds']['median']:.2f} ({_cpu(ours)}) "
                f"| {_ratio(ours)} | {_ratio(ours, 'cpu_time_ratio')} "
                f"| {_mb(ref['memory']['peak_bytes'])} / {_mb(ours['memory']['peak_bytes'])} |"
            )
            for variant, v in r.items():
                if variant not in ("reference", "safeft"):
                    out.append(
                        f"| {method} ({precision}), safeft {variant} | | | {v['seconds']['median']:.2f} ({_cpu(v)}) "
                        f"| {_ratio(v)} | {_ratio(v, 'cpu_time_ratio')} | – / {_mb(v['memory']['peak_bytes'])} |"
                    )
    for precision, why in result.not_measured.items():
        out.append(f"| every method ({precision}) | {why} | | | | | |")
    if s.variants:
        from safeft.bench import VARIANTS

        out += [
            "",
            "*safeft <variant>* rows: safeft stepped another way in the same rounds (its ratio is to the same reference):",
        ]
        out += [f"- {v}: {VARIANTS[v]}" for v in s.variants if v in VARIANTS]
    return out + [""]
