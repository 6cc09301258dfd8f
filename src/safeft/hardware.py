"""Whether this machine computes in bf16 natively: decided by measurement, once per process.

bf16 is the papers' precision on GPUs and ~2x faster than fp32 on CPUs with AVX-512 bf16 or AMX.
On a CPU without them (AVX2 only) PyTorch emulates it and a bf16 matrix product runs ~60x slower
than fp32 (measured on an AVX2 EPYC: 0.8 vs 50 GFLOP/s), turning a 4 s LoRA step into 90 s. So a
bf16 request is honoured only where it pays, and the precision actually used is logged and
recorded in the run's metrics.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger("safeft")

# bf16 counts as native when its product takes at most this many times fp32's (native: ~0.5x).
_SLOWDOWN_ALLOWED = 1.5


@functools.cache
def native_bf16() -> bool:
    """True on a GPU that supports bf16, or on a CPU whose bf16 matrix product is not slower than fp32's."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16_seconds() <= _SLOWDOWN_ALLOWED * _cpu_fp32_seconds()


def _best_of(dtype: torch.dtype, size: int = 256, repeats: int = 3) -> float:
    a = torch.ones(size, size, dtype=dtype)
    a @ a  # warm-up: kernel selection, thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return best


def _cpu_fp32_seconds() -> float:
    return _best_of(torch.float32)


def _cpu_bf16_seconds() -> float:
    return _best_of(torch.bfloat16)


def use_bf16(requested: bool, what: str) -> bool:
    """`requested`, unless this machine has no native bf16: then fp32, with a warning saying why."""
    if requested and not native_bf16():
        log.warning(
            "%s: bf16 requested, but this CPU has no native bf16 (no AVX-512 bf16 / AMX; bf16 would be "
            "many times slower than fp32 here): using fp32",
            what,
        )
        return False
    return requested


def generation_dtype(requested: str, what: str) -> str:
    """The dtype generation runs in: `requested`, except bfloat16 on a machine without native bf16."""
    if requested == "bfloat16" and not use_bf16(True, what):
        return "float32"
    return requested
