"""bf16 is used only where the hardware computes it natively (safeft.hardware)."""

from __future__ import annotations

import logging

import pytest

from safeft import hardware


@pytest.fixture
def cpu_speeds(monkeypatch):
    """Pretend timings of a 256x256 product: set the bf16 and fp32 seconds."""

    def set_speeds(bf16: float, fp32: float) -> None:
        hardware.native_bf16.cache_clear()
        monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(hardware, "_cpu_bf16_seconds", lambda: bf16)
        monkeypatch.setattr(hardware, "_cpu_fp32_seconds", lambda: fp32)

    yield set_speeds
    hardware.native_bf16.cache_clear()


def test_an_avx2_cpu_trains_and_generates_in_fp32_with_a_warning(cpu_speeds, caplog):
    cpu_speeds(bf16=0.025, fp32=0.0004)  # measured on an AVX2-only EPYC: bf16 ~60x slower
    with caplog.at_level(logging.WARNING, logger="safeft"):
        assert hardware.use_bf16(True, "training") is False
        assert hardware.generation_dtype("bfloat16", "generation") == "float32"
    assert "no native bf16" in caplog.text


def test_a_cpu_with_native_bf16_keeps_the_request(cpu_speeds):
    cpu_speeds(bf16=0.0002, fp32=0.0004)  # AMX / AVX-512 bf16: about twice as fast
    assert hardware.use_bf16(True, "training") is True
    assert hardware.generation_dtype("bfloat16", "generation") == "bfloat16"


def test_fp32_requests_are_never_changed(cpu_speeds):
    cpu_speeds(bf16=0.025, fp32=0.0004)
    assert hardware.use_bf16(False, "training") is False
    assert hardware.generation_dtype("float32", "generation") == "float32"
    assert hardware.generation_dtype("float16", "generation") == "float16"


def test_the_measurement_runs_on_this_machine():
    hardware.native_bf16.cache_clear()
    assert isinstance(hardware.native_bf16(), bool)
    assert hardware._cpu_fp32_seconds() > 0
