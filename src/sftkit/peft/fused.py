"""A LoRA layer on a frozen base as one autograd step, for speed and memory in training.

    y = base(x) + s (d A^T) B^T        d = dropout(x) = x * mask / (1 - p)

Autograd would run it as separate ops: the base's matmul, the dropout, the two adapter matmuls,
a scale and a sum, each with its own pass over the (tokens x features) activations, and in
backward the gradient of `x`, reached by two paths, summed in another pass. Here the update is
added inside B's matmul and the scale applied to the rank-r activations; in backward, the
adapter's share of the gradient of `x` is accumulated inside its matmul. The frozen weight never
gets a gradient.

Memory: what backward keeps is `x` itself (which q, k and v share: one copy for three
adapters), the rank-r `d A^T`, and with dropout only the dropout's mask, one byte a value.
Autograd's dropout would keep, per adapter, its fp32 mask and the dropped fp32 copy of `x`
(8 bytes a value, three times over for q, k and v); here the dropped input is rebuilt from `x`
and the mask in backward. The mask is drawn exactly as `torch.nn.Dropout` draws it.

The base is a dense frozen weight (and bias), or a quantized layer
(`sftkit.peft.quantized.QuantizedLinear`), whose matmuls decode the weight slice by slice.

Example:
    >>> import torch
    >>> x = torch.randn(3, 8, requires_grad=True)
    >>> base = torch.nn.Linear(8, 5, bias=False).requires_grad_(False)
    >>> a, b = torch.randn(2, 8), torch.randn(5, 2)
    >>> y = lora_linear(x, base, a.requires_grad_(), b.requires_grad_(), 0.5)
    >>> bool(torch.allclose(y, x @ base.weight.T + 0.5 * (x @ a.T) @ b.T, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from sftkit.peft.quantized import QuantizedLinear

FrozenBase = nn.Linear | QuantizedLinear


def _base_matmul(base: FrozenBase, flat: torch.Tensor) -> torch.Tensor:
    """`flat W^T + b`, a fresh (tokens, out_features) tensor."""
    if isinstance(base, QuantizedLinear):
        return base.matmul(flat)
    weight = base.weight.t()
    return torch.mm(flat, weight) if base.bias is None else torch.addmm(base.bias, flat, weight)


def _base_input_grad(base: FrozenBase, grad: torch.Tensor) -> torch.Tensor:
    """`grad W`, a fresh (tokens, in_features) tensor."""
    if isinstance(base, QuantizedLinear):
        return base.input_grad(grad)
    return torch.mm(grad, base.weight)


def _dropout_scale(mask: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """`mask / (1 - p)` as `torch.nn.functional.dropout` computes it."""
    return mask.to(dtype).div_(1 - p)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, base, lora_A, lora_B, scaling, dropout_p):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = _base_matmul(base, flat)
        mask = None
        dropped = flat
        if dropout_p:  # the same draw from the same generator as nn.Dropout
            mask = torch.empty_like(flat, dtype=torch.bool).bernoulli_(1 - dropout_p)
            dropped = flat * _dropout_scale(mask, dropout_p, flat.dtype)
        down = torch.mm(dropped, lora_A.t()).mul_(scaling)
        del dropped  # rebuilt in backward from x and the one-byte mask
        out.addmm_(down, lora_B.t())
        ctx.base, ctx.scaling, ctx.dropout_p = base, scaling, dropout_p
        ctx.save_for_backward(flat, mask, down, lora_A, lora_B)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        flat, mask, down, lora_A, lora_B = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_down = torch.mm(grad, lora_B).mul_(ctx.scaling)  # of d A^T, before the scale
        scale = None if mask is None else _dropout_scale(mask, ctx.dropout_p, flat.dtype)
        grad_A = grad_B = grad_x = None
        if ctx.needs_input_grad[2]:
            grad_A = torch.mm(grad_down.t(), flat if scale is None else flat * scale)
        if ctx.needs_input_grad[3]:
            grad_B = torch.mm(grad.t(), down)
        if ctx.needs_input_grad[0]:
            grad_x = _base_input_grad(ctx.base, grad)
            if scale is None:  # both paths' gradients of x, summed by the matmul
                grad_x.addmm_(grad_down, lora_A)
            else:
                grad_x.add_(torch.mm(grad_down, lora_A).mul_(scale))
            grad_x = grad_x.view(*grad_out.shape[:-1], flat.shape[-1])
        return grad_x, None, grad_A, grad_B, None, None


def lora_linear(x: torch.Tensor, base: FrozenBase, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float, dropout_p: float = 0.0) -> torch.Tensor:
    """`base(x) + scaling * (dropout(x) A^T) B^T` with a frozen `base` (an `nn.Linear`, or a
    `QuantizedLinear` computing in x's dtype); `x`, the adapter and a dense base of one
    dtype; `dropout_p` 0 outside training."""
    return _LoraLinear.apply(x, base, lora_A, lora_B, scaling, dropout_p)
