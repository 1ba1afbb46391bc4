"""fp32 matrix products on AMD x86 CPUs through oneDNN instead of MKL.

PyTorch's CPU builds hand an fp32 `F.linear` or `torch.mm` to MKL, and MKL runs its AVX2 code
on AMD processors even where they have AVX-512. On this project's AMD EPYC benchmark machine
(2 cores, avx512f), at our training shapes (480–1,200 rows, 576–3,072 columns), MKL ran 210–225
GFLOP/s and oneDNN (the library PyTorch already ships for its bf16 products) 490–500: 2.2–2.35×
faster, forward and backward. Restricted to AVX2 as the slowest machine seen
(`ONEDNN_MAX_CPU_ISA=AVX2`), oneDNN was still 1.14–1.19× faster there (benchmarks/RESULTS.md,
"fp32 products through oneDNN"). The result is the same fp32 product summed in another order
(relative differences about 1e-6, as between MKL's own blockings).

So, on an AMD x86 CPU with oneDNN, `linear` (differentiable: its input and weight gradients
are oneDNN products too), `mm` and the models' `Linear` layers run their fp32 products through
oneDNN. Everywhere else (Intel, ARM, CUDA, bf16/fp16 or under a lowering autocast, tensor
subclasses) they are the standard ops. `SFTKIT_MATMUL=blas` keeps MKL, `SFTKIT_MATMUL=onednn`
asks for oneDNN on any x86 CPU (it was not measured on Intel's, where MKL runs its best code);
`use_onednn` switches it in a process (benchmarks compare both).

Example:
    >>> import torch
    >>> x, w = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    >>> y = linear(x, w)
    >>> bool(torch.allclose(y, x @ w.T, atol=1e-5)), y.shape
    (True, torch.Size([5, 3]))
    >>> y.sum().backward()
    >>> bool(torch.allclose(w.grad, x.sum(0).expand(3, 8), atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sftkit.device import cpu_vendor
from sftkit.errors import SftkitError

_PLAIN = (torch.Tensor, nn.Parameter)
_setting: bool | None = None  # use_onednn's, over the environment's and the detected default


@functools.cache
def available() -> bool:
    """Whether this process can run oneDNN's fp32 product: an x86 CPU, PyTorch built with
    oneDNN."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@functools.cache
def _detected() -> bool:
    """The environment's choice (`SFTKIT_MATMUL`), else oneDNN on an AMD CPU."""
    wanted = os.environ.get("SFTKIT_MATMUL", "auto").strip().lower()
    if wanted not in ("auto", "onednn", "blas"):
        raise SftkitError(f"environment variable SFTKIT_MATMUL={wanted!r}: expected auto, "
                          "onednn or blas")
    if wanted != "auto":
        return wanted == "onednn"
    return cpu_vendor() == "AuthenticAMD"


def onednn_enabled() -> bool:
    """Whether fp32 CPU products go through oneDNN in this process."""
    return available() and (_detected() if _setting is None else _setting)


def use_onednn(enabled: bool | None) -> bool | None:
    """Route fp32 CPU products through oneDNN (True, where `available`), the BLAS (False) or
    as detected (None); returns the previous setting, to restore it.

    Example:
        >>> previous = use_onednn(False)
        >>> onednn_enabled()
        False
        >>> _ = use_onednn(previous)
    """
    global _setting
    previous, _setting = _setting, enabled
    return previous


def routed(*tensors: torch.Tensor | None) -> bool:
    """Whether a product of these tensors goes to oneDNN: all fp32, plain, on the CPU, not
    empty, and no autocast that would lower it.

    Example:
        >>> routed(torch.ones(2, 2, dtype=torch.bfloat16), torch.ones(2, 2))
        False
    """
    if not onednn_enabled():
        return False
    for tensor in tensors:
        if tensor is None:
            continue
        if (type(tensor) not in _PLAIN or tensor.dtype != torch.float32
                or tensor.device.type != "cpu" or tensor.numel() == 0):
            return False
    return not (torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") != torch.float32)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
             ) -> torch.Tensor:
    """`x @ weight^T + bias` by oneDNN (x of any leading shape; either may be a strided
    view, e.g. a transpose)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x if weight.requires_grad else None,
                              weight if x.requires_grad else None)
        return _product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = _product(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_weight = _product(flat.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, by oneDNN where `onednn_enabled` and the operands are
    plain fp32 CPU tensors outside a lowering autocast (module docstring)."""
    if weight.dim() != 2 or x.dim() < 2 or not routed(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _OneDnnLinear.apply(x, weight, bias)
    return _product(x, weight, bias)


def mm(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`torch.mm(left, right)` (not differentiable through oneDNN: for autograd Functions'
    own products), by oneDNN where `linear` would be.

    Example:
        >>> a, b = torch.randn(4, 6), torch.randn(6, 2)
        >>> bool(torch.allclose(mm(a, b), a @ b, atol=1e-5))
        True
    """
    if not routed(left, right):
        return torch.mm(left, right)
    return _product(left, right.t())


def addmm(bias: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`torch.addmm(bias, left, right)` for a bias row (out_features,), as `mm`."""
    if not routed(left, right, bias) or bias.dim() != 1:
        return torch.addmm(bias, left, right)
    return _product(left, right.t(), bias)


def addmm_(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`out.addmm_(left, right)` (`out += left @ right`), as `mm`."""
    if not routed(out, left, right):
        return out.addmm_(left, right)
    return out.add_(_product(left, right.t()))


class Linear(nn.Linear):
    """`nn.Linear` whose product is `linear`'s (the same parameters, names and state dict).

    Example:
        >>> layer = Linear(8, 3)
        >>> x = torch.randn(2, 4, 8)
        >>> bool(torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
