"""A LoRA layer on a frozen dense base as one autograd step, for speed in training.

    y = x W^T + b + s (d A^T) B^T        d = dropout(x) (d is x itself without dropout)

Autograd would run it as separate ops: the base's matmul, the two adapter matmuls, a scale and
a sum, each with its own pass over the (tokens x features) activations, and in backward the
gradient of `x`, reached by two paths, summed in another pass. Here the update is added inside
B's matmul and the scale applied to the rank-r activations; in backward, the adapter's share of
the gradient of `x` is accumulated inside its matmul. The frozen weight never gets a gradient.

Example:
    >>> import torch
    >>> x = torch.randn(3, 8, requires_grad=True)
    >>> weight, a, b = torch.randn(5, 8), torch.randn(2, 8), torch.randn(5, 2)
    >>> y = lora_linear(x, x, weight, None, a.requires_grad_(), b.requires_grad_(), 0.5)
    >>> bool(torch.allclose(y, x @ weight.T + 0.5 * (x @ a.T) @ b.T, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lora_input, weight, bias, lora_A, lora_B, scaling):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        lora_flat = flat if lora_input is x else lora_input.reshape(-1, shape[-1])
        out = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
        down = torch.mm(lora_flat, lora_A.t()).mul_(scaling)
        out.addmm_(down, lora_B.t())
        ctx.shared_input = lora_input is x
        ctx.scaling = scaling
        ctx.save_for_backward(lora_flat, down, weight, lora_A, lora_B)
        return out.view(*shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        lora_flat, down, weight, lora_A, lora_B = ctx.saved_tensors
        need_x, need_lora_input = ctx.needs_input_grad[:2]
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_down = torch.mm(grad, lora_B).mul_(ctx.scaling)  # of d A^T, before the scale
        grad_A = torch.mm(grad_down.t(), lora_flat) if ctx.needs_input_grad[4] else None
        grad_B = torch.mm(grad.t(), down) if ctx.needs_input_grad[5] else None
        grad_x = grad_lora_input = None
        if need_x:
            grad_x = torch.mm(grad, weight)
            if ctx.shared_input:  # both paths' gradients of x, summed by the matmul
                grad_x.addmm_(grad_down, lora_A)
            grad_x = grad_x.view(*grad_out.shape[:-1], weight.shape[1])
        if need_lora_input and not ctx.shared_input:
            grad_lora_input = torch.mm(grad_down, lora_A).view(*grad_out.shape[:-1],
                                                               weight.shape[1])
        return grad_x, grad_lora_input, None, None, grad_A, grad_B, None


def lora_linear(x: torch.Tensor, lora_input: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, lora_A: torch.Tensor, lora_B: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """`x W^T + b + scaling * (lora_input A^T) B^T` with a frozen `weight` and `bias`
    (`lora_input` is `x`, or `dropout(x)`); all tensors of one dtype."""
    return _LoraLinear.apply(x, lora_input, weight, bias, lora_A, lora_B, scaling)
