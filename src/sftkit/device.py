"""Device and precision selection: detect, don't assume.

On CUDA, bf16 autocast is used where the GPU supports it. On a CPU, bf16 can only win where
the CPU has bf16 instructions (AVX-512 BF16, AMX, Arm BF16): elsewhere it is emulated, 50 to
100 times slower than fp32, and `auto` picks fp32 without timing anything. Where the
instructions exist they still do not guarantee that PyTorch's bf16 kernels beat fp32 (on some
Xeons they are twice slower), so `auto` times one transformer-sized matmul both ways (about
0.3 s, once per process) and picks bf16 only when it is clearly faster.

Example:
    >>> device = pick_device("cpu")
    >>> pick_precision(device, "fp32")
    'fp32'
    >>> cpu_has_native_bf16() in (True, False, None)
    True
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sftkit.errors import SftkitError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_SPEEDUP = 1.15
#: CPU flags (x86 `flags`, Arm `Features` in /proc/cpuinfo) of native bf16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "svebf16"})


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, then Apple MPS, then CPU; or any torch device string."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SftkitError(f"unknown device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SftkitError("device cuda requested, but torch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SftkitError("device mps requested, but this torch has no Apple MPS support")
    return device


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The first CPU's value of the first of `keys` in /proc/cpuinfo, or None where the OS
    does not list it (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags, or None where the OS does not list them (macOS, Windows)."""
    value = _cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if value is None else frozenset(value.split())


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vendor as Linux names it (`AuthenticAMD`, `GenuineIntel`), or "" where the OS
    does not list it."""
    return _cpuinfo_field(("vendor_id",), cpuinfo) or ""


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU computes in bf16 natively; None when that cannot be read."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    # Without flags: an x86 CPU that PyTorch runs at AVX2 has no AVX-512, so no AVX-512 BF16.
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        return False
    return None


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 1024, rounds: int = 5, repeats: int = 3,
                     linear: Callable[..., torch.Tensor] = F.linear) -> float:
    """Measured fp32 time / bf16-autocast time of a (size x size) @ (size x size) `linear`
    (the product the models run: `sftkit.models.matmul.linear` takes fp32 to oneDNN on AMD
    CPUs); 0.0 without timing where the CPU has no bf16 instructions (emulated bf16 never
    wins).

    The two are timed in alternation and each keeps its best round, so a burst of other work
    on a shared machine cannot make the slower one look faster (it once picked bf16 at 0.5x).
    """
    if cpu_has_native_bf16() is False:
        return 0.0
    x = torch.randn(size, size)
    w = torch.randn(size, size)

    def seconds(autocast: bool) -> float:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast \
            else contextlib.nullcontext()
        with context:
            start = time.perf_counter()
            for _ in range(repeats):
                linear(x, w)
            return time.perf_counter() - start

    try:
        seconds(False), seconds(True)  # warm-up (kernel selection, packing)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(rounds):
            for autocast in (False, True):
                best[autocast] = min(best[autocast], seconds(autocast))
        return best[False] / best[True]
    except RuntimeError:
        return 0.0  # no bf16 kernels at all


def pick_precision(device: torch.device, requested: str = "auto",
                   linear: Callable[..., torch.Tensor] = F.linear) -> str:
    """`fp32`, `bf16` or `fp16`: the requested one, or for `auto` the fastest that is safe
    (on a CPU: bf16 where `linear`, timed as `cpu_bf16_speedup` does, is faster in it)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise SftkitError(f"unknown precision {requested!r}; known: auto, {', '.join(DTYPES)}")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_speedup(linear=linear) >= BF16_MIN_SPEEDUP else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a precision (weights stay fp32; matmuls run in low precision)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def describe(device: torch.device, precision: str) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"CPU, {torch.get_num_threads()} threads"
    else:
        name = device.type
    return f"{device} ({name}), {precision}"
