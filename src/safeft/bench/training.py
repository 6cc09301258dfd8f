"""Cost of one optimizer step of every method: seconds (interleaved repetitions) and peak live-tensor bytes.

Each method's own Trainer does the step, exactly as `Trainer.train` would: `training_step` (all of a
multi-pass method's passes), gradient clipping, `optimizer.step()`, the scheduler and `zero_grad`.
The model is prepared by the Trainer's Accelerator, so `bf16` means Accelerate's autocast around the
forward passes, as in a real run. Every method gets its own copy of the same base model and a fresh
LoRA adapter with the same seed; every batch has the same shape (equal-length rows, no padding).

Timing: the methods take turns, one step each per round, the order rotated every round, so that load
from other processes on the machine falls on all methods alike. Warm-up rounds are not timed.

On a GPU the step is timed between `torch.cuda.synchronize()` calls and memory is
`torch.cuda.memory_allocated` / `max_memory_allocated`; on CPU:

Memory: peak live CPU tensor bytes of one steady-state step (after a warm-up step), via the PyTorch
profiler's allocator events (`profile_memory=True`): every allocation and free of a CPU tensor is an
event, their running sum during the step is the step's extra memory, and the step starts from the
bytes of every tensor alive then (found with `gc`; the model copy, adapter, optimizer moments and the
method's persistent buffers). Allocator caching, Python objects and library workspaces are not counted.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from safeft.data.tokenize import IGNORE_INDEX, PaddingCollator
from safeft.methods import METHODS
from safeft.models import LoraSettings, attach_lora

log = logging.getLogger("safeft.bench")

# Fields of method configs whose value is a batch size: set to the benchmark batch so that every
# pass of every method sees the same number of rows.
BATCH_FIELDS = ("harmful_batch_size",)


@dataclass
class StepSetup:
    """What is held equal across methods."""

    batch_size: int
    seq_len: int
    lora_r: int
    precision: str  # "fp32" or "bf16" (autocast)
    seed: int = 0


@dataclass
class Spread:
    """Median and spread of repeated measurements."""

    values: list[float]
    median: float = field(init=False)
    q1: float = field(init=False)
    q3: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)

    def __post_init__(self) -> None:
        v = sorted(self.values)
        self.median = statistics.median(v)
        if len(v) >= 2:
            q = statistics.quantiles(v, n=4, method="inclusive")
            self.q1, self.q3 = q[0], q[2]
        else:
            self.q1 = self.q3 = v[0]
        self.min, self.max = v[0], v[-1]


def fixed_rows(n: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """`n` rows of exactly `seq_len` random tokens; the first half is the prompt (label -100)."""
    g = torch.Generator().manual_seed(seed)
    prompt = seq_len // 2
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (seq_len,), generator=g).tolist()
        out.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * seq_len,
                "labels": [IGNORE_INDEX] * prompt + ids[prompt:],
            }
        )
    return out


def method_config(spec: Any, batch_size: int) -> Any:
    cfg = spec.config_cls()
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{f: batch_size for f in BATCH_FIELDS if f in names})


class MethodStep:
    """One method's Trainer, prepared like `Trainer.train` prepares it, and a callable optimizer step."""

    def __init__(
        self,
        name: str,
        base_model: Any,
        pad_id: int,
        setup: StepSetup,
        workdir: str,
        registry: Mapping[str, Any] = METHODS,
    ):
        from transformers import TrainingArguments

        self.name = name
        torch.manual_seed(setup.seed)
        model = attach_lora(copy.deepcopy(base_model), LoraSettings(r=setup.lora_r))
        vocab = int(base_model.config.vocab_size)
        rows = fixed_rows(4 * setup.batch_size, setup.seq_len, vocab, setup.seed)
        self.collator = PaddingCollator(pad_id)
        args = TrainingArguments(
            output_dir=workdir,
            per_device_train_batch_size=setup.batch_size,
            learning_rate=1e-5,
            use_cpu=not torch.cuda.is_available(),
            bf16=setup.precision == "bf16",
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            remove_unused_columns=False,
            seed=setup.seed,
            dataloader_num_workers=0,
        )
        spec = registry[name]
        self.trainer = spec.trainer_cls(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=self.collator,
            method_config=method_config(spec, setup.batch_size),
            harmful_dataset=fixed_rows(4 * setup.batch_size, setup.seq_len, vocab, setup.seed + 1),
            alignment_dataset=fixed_rows(4 * setup.batch_size, setup.seq_len, vocab, setup.seed + 2),
        )
        t = self.trainer
        # What Trainer._inner_training_loop does before its first step.
        self.model = t.accelerator.prepare(t.model)
        t.create_optimizer(self.model)
        t.optimizer = t.accelerator.prepare(t.optimizer)
        t.create_scheduler(num_training_steps=1_000_000)
        t.state.max_steps = 10  # Lisa's proximal term is on from step 1 (warm-up ratio 0.1)
        t.state.global_step = 0
        t.current_gradient_accumulation_steps = 1
        self.batches = [
            self.collator(rows[i : i + setup.batch_size]) for i in range(0, len(rows), setup.batch_size)
        ]

    def step(self) -> float:
        """One optimizer step as Trainer runs it; returns its wall time in seconds."""
        t, model = self.trainer, self.model
        batch = {k: v.clone() for k, v in self.batches[t.state.global_step % len(self.batches)].items()}
        _synchronize()  # on a GPU, time the kernels, not their launch
        start, cpu_start = time.perf_counter(), time.process_time()
        t.training_step(model, batch)
        if t.args.max_grad_norm > 0:
            t._clip_grad_norm(model)
        t.optimizer.step()
        t.lr_scheduler.step()
        model.zero_grad()
        t.state.global_step += 1
        _synchronize()
        # CPU seconds of this process: the work of the step, what load from other processes on a
        # shared machine inflates least (with one torch thread, wall time waits for the CPU too).
        self.cpu_seconds = time.process_time() - cpu_start
        return time.perf_counter() - start

    def close(self) -> None:
        t = self.trainer
        if hasattr(t, "trainable"):  # T-Vaccine leaves adapters frozen between its steps
            for p in t.trainable:
                p.requires_grad_(True)
        t.accelerator.free_memory()
        self.trainer = self.model = None  # type: ignore[assignment]


# ----- memory ---------------------------------------------------------------------------------------


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alive() -> Any:
    """What is allocated now: CUDA bytes on a GPU, else the storages of every live CPU tensor."""
    if torch.cuda.is_available():
        _synchronize()
        return torch.cuda.memory_allocated()
    return live_tensor_storages()


def added_bytes(before: Any, after: Any) -> int:
    """Bytes allocated between two `alive()` readings (and still alive at the second)."""
    if isinstance(before, int):
        return after - before
    return sum(n for ptr, n in after.items() if ptr not in before)


def live_tensor_storages() -> dict[int, int]:
    """data_ptr -> nbytes of the storage of every CPU tensor reachable from Python."""
    gc.collect()
    out: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on deprecated module proxies warns
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objects:
        try:
            if obj.device.type == "cpu" and not obj.is_meta:
                st = obj.untyped_storage()
                if st.nbytes() and st.data_ptr():
                    out[st.data_ptr()] = st.nbytes()
        except Exception:  # noqa: BLE001 - exotic tensor subclasses: skip
            continue
    return out


def step_peak_bytes(step: Callable[[], Any]) -> tuple[int, int]:
    """(peak of the running sum of allocator events during `step()`, bytes still allocated at its end).

    On a GPU: `torch.cuda.max_memory_allocated` during the step, above what was allocated at its start.
    """
    if torch.cuda.is_available():
        start = alive()
        torch.cuda.reset_peak_memory_stats()
        step()
        end = alive()
        return torch.cuda.max_memory_allocated() - start, end - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and "CPU" in str(e.device_type())
    ]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak, running


def rotated(round_: int, steps: list[MethodStep]) -> list[MethodStep]:
    """The default round order: the list rotated by one more place every round."""
    k = round_ % len(steps)
    return steps[k:] + steps[:k]


@dataclass
class MemoryResult:
    peak_bytes: int  # live tensor bytes at the step's peak: this method's state + the step's transient peak
    state_bytes: int  # left alive by set-up + warm-up: model copy, adapter, moments, buffers
    transient_peak_bytes: int  # the step's own peak above that state


@dataclass
class MethodCost:
    seconds: Spread
    memory: MemoryResult
    cpu_seconds: Spread | None = None  # CPU time of the process during each timed step


def measure_methods(
    methods: Sequence[str],
    base_model: Any,
    pad_id: int,
    setup: StepSetup,
    reps: int,
    progress: Callable[[str], None] = log.info,
    registry: Mapping[str, Any] = METHODS,
    order: Callable[[int, list[MethodStep]], list[MethodStep]] | None = None,
) -> dict[str, MethodCost]:
    """Seconds per step (`reps` interleaved rounds) and peak live-tensor bytes of every method.

    1. Set-up, one method at a time: its trainer and one warm-up step; the tensors this leaves
       alive (found with gc, compared with before) are the method's state.
    2. One untimed round under the profiler: each step's transient peak of tensor bytes.
    3. `reps` timed rounds, the order rotated every round (or `order(round, steps)`).
    """
    order = order or rotated
    with tempfile.TemporaryDirectory() as workdir:
        steps: list[MethodStep] = []
        state: dict[str, int] = {}
        transient: dict[str, int] = {}
        times: dict[str, list[float]] = {m: [] for m in methods}
        cpu_times: dict[str, list[float]] = {m: [] for m in methods}
        try:
            for name in methods:
                before = alive()
                s = MethodStep(name, base_model, pad_id, setup, workdir, registry)
                seconds = s.step()
                state[name] = added_bytes(before, alive())
                steps.append(s)
                progress(f"[{setup.precision}] set up {name}: warm-up step {seconds:.2f}s")
            for s in steps:
                transient[s.name], _ = step_peak_bytes(s.step)
            progress(f"[{setup.precision}] memory round done")
            for round_ in range(reps):
                for s in order(round_, steps):
                    times[s.name].append(s.step())
                    cpu_times[s.name].append(s.cpu_seconds)
                progress(
                    f"[{setup.precision}] round {round_ + 1}/{reps}: "
                    + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in methods)
                )
        finally:
            for s in steps:
                s.close()
            del steps
            gc.collect()
    return {
        m: MethodCost(
            Spread(times[m]),
            MemoryResult(state[m] + transient[m], state[m], transient[m]),
            Spread(cpu_times[m]),
        )
        for m in methods
    }
