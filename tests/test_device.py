"""Device and precision choice: `precision=auto` on a CPU times bf16 only where the CPU has bf16
instructions (emulated bf16 costs most of a minute to time and never wins)."""

from __future__ import annotations

import pytest
import torch

from sftkit import device as device_module
from sftkit.device import (
    cpu_bf16_speedup,
    cpu_flags,
    cpu_has_native_bf16,
    cpu_vendor,
    pick_precision,
)
from sftkit.errors import SftkitError


@pytest.fixture
def fresh_probe():
    cpu_bf16_speedup.cache_clear()
    yield
    cpu_bf16_speedup.cache_clear()


def no_timing(*args, **kwargs):
    raise AssertionError("bf16 was timed on a CPU without bf16 instructions")


@pytest.mark.parametrize("flags", [{"fpu", "avx2", "fma"}, {"fp", "asimd", "sve"}])
def test_auto_picks_fp32_without_timing_where_the_cpu_has_no_bf16(monkeypatch, fresh_probe,
                                                                  flags):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(device_module.time, "perf_counter", no_timing)
    assert pick_precision(torch.device("cpu"), "auto") == "fp32"


def test_without_flags_an_avx2_cpu_is_not_timed(monkeypatch, fresh_probe):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(device_module.time, "perf_counter", no_timing)
    assert cpu_has_native_bf16() is False
    assert pick_precision(torch.device("cpu"), "auto") == "fp32"


@pytest.mark.parametrize("flags", [{"avx512f", "avx512_bf16"}, {"amx_bf16"}, {"asimd", "bf16"}])
def test_bf16_is_timed_where_it_may_win(monkeypatch, fresh_probe, flags):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    calls = []
    real = device_module.time.perf_counter
    monkeypatch.setattr(device_module.time, "perf_counter", lambda: calls.append(1) or real())
    assert cpu_bf16_speedup(size=32, rounds=1, repeats=1) > 0
    assert calls


def test_cpu_flags_and_vendor_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                   "flags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") is None
    assert cpu_vendor(x86) == "AuthenticAMD"
    assert cpu_vendor(arm) == cpu_vendor(tmp_path / "missing") == ""


def test_an_unknown_precision_is_a_clear_error():
    with pytest.raises(SftkitError, match="unknown precision 'fp8'"):
        pick_precision(torch.device("cpu"), "fp8")
