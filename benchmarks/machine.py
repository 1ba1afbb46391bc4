"""The machine: CPU, cores, threads, bf16 support, library versions, measured matmul peaks."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx512_vnni", "avx2")


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": [flag for flag in BF16_FLAGS if flag in flags]}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "tiktoken", "safetensors", "sftkit"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 6,
                  rounds: int = 3) -> float:
    """The best of `rounds` timings of `repeats` (size x size) @ (size x size) matmuls, as
    sftkit's models run them (`sftkit.models.matmul.mm`: fp32 through oneDNN on AMD CPUs)."""
    from sftkit.models.matmul import mm

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    mm(a, b)  # warm-up: kernel selection, packing buffers
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            mm(a, b)
        seconds = time.perf_counter() - started
        best = max(best, 2 * size ** 3 * repeats / seconds / 1e9)
    return best


def measure_peaks(size: int = 2048, rounds: int = 3) -> dict[str, float]:
    """fp32 and bf16 matmul GFLOP/s (interleaved, best of `rounds` each), and sftkit's own
    bf16/fp32 speed ratio (the measurement behind `precision=auto`).

    Where the CPU has no bf16 instructions, bf16 is not timed (emulated, it runs about 100x
    slower than fp32 on an AVX2-only CPU: minutes for nothing) and its figures are 0."""
    from sftkit.device import cpu_bf16_speedup, cpu_has_native_bf16, pick_precision
    from sftkit.models.matmul import linear

    time_bf16 = cpu_has_native_bf16() is not False
    fp32 = bf16 = 0.0
    for _ in range(rounds):
        fp32 = max(fp32, matmul_gflops(torch.float32, size, rounds=1))
        if time_bf16:
            bf16 = max(bf16, matmul_gflops(torch.bfloat16, size, rounds=1))
    return {"fp32_gflops": fp32, "bf16_gflops": bf16, "bf16_over_fp32": bf16 / fp32,
            "bf16_timed": time_bf16,
            "sftkit_bf16_speedup": cpu_bf16_speedup(linear=linear),
            "sftkit_auto_precision": pick_precision(torch.device("cpu"), "auto", linear)}


def describe_bf16(peaks: dict[str, Any]) -> str:
    """The bf16 matmul figure, or why there is none."""
    if not peaks.get("bf16_timed", True):
        return "bf16 not timed (no bf16 instructions on this CPU)"
    return f"bf16 {peaks['bf16_gflops']:.1f} GFLOP/s (bf16/fp32 = {peaks['bf16_over_fp32']:.2f})"
