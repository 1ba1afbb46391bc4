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

Layers that read the same input (q, k and v; gate and up) go through one such step together
(`lora_linears`, used by `sftkit.peft.shared_input`): one matmul against their frozen weights
stacked row-wise, one for their As stacked, one for their Bs as a block-diagonal matrix, and in
backward one input-gradient matmul for all of them. Fewer, larger matmuls: faster at these
shapes, and on a shared machine, where every op waits for its threads, fewer waits.

Under autocast (bf16 or fp16) the step computes in autocast's dtype, as autocast would run the
unfused ops: x and the adapter matrices are cast per call, the output is in that dtype, and the
gradients of x and of the adapters come back in their own dtypes (fp32). The frozen dense weight
(and bias) is not cast per call: autocast would cast every frozen weight again on every forward
(its cache keeps only leaf tensors that require grad), a pass over the weights of the whole
model per step. `CastWeights` keeps one copy in autocast's dtype instead, made at the first
call and reused while the weight is unchanged. Its cost: that copy, half the adapted frozen
weights' fp32 bytes in bf16, for as long as it lives (it is no part of the state dict, a deep
copy or a pickle starts without it, and `sftkit.peft.lora.release_cast_weights` frees it).
Worth it: with the casts and the fusion, SmolLM2-135M's bf16 LoRA step spent 0.18 s instead
of 0.87 s copying over 3 steps, and ran 1.44x its full fine-tuning instead of 1.31x
(benchmarks/RESULTS.md, LoRA).

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

import weakref
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from sftkit.models import matmul
from sftkit.peft.quantized import QuantizedLinear


class DenseWeight(NamedTuple):
    """A frozen dense weight (out_features, in_features) and bias, not wrapped in a module:
    the rows of sibling layers' weights that share an input (`sftkit.peft.shared_input`)."""

    weight: torch.Tensor
    bias: torch.Tensor | None


FrozenBase = nn.Linear | QuantizedLinear | DenseWeight


def _base_matmul(base: FrozenBase, flat: torch.Tensor) -> torch.Tensor:
    """`flat W^T + b`, a fresh (tokens, out_features) tensor."""
    if isinstance(base, QuantizedLinear):
        return base.matmul(flat)
    weight = base.weight.t()
    return (matmul.mm(flat, weight) if base.bias is None
            else matmul.addmm(base.bias, flat, weight))


def _base_input_grad(base: FrozenBase, grad: torch.Tensor) -> torch.Tensor:
    """`grad W`, a fresh (tokens, in_features) tensor."""
    if isinstance(base, QuantizedLinear):
        return base.input_grad(grad)
    return matmul.mm(grad, base.weight)


def _dropout_scale(mask: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """`mask / (1 - p)` as `torch.nn.functional.dropout` computes it."""
    return mask.to(dtype).div_(1 - p)


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along their first dimension (one of them as it is)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _block_diagonal(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The B matrices as one (sum of out_features, adapters x r) matrix: one matmul adds
    every adapter's update to its own columns of the shared output."""
    return tensors[0] if len(tensors) == 1 else torch.block_diag(*tensors)


def _scaled_mm(left: torch.Tensor, right: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale * left @ right` in one op (the scale applied inside the matmul, the same
    result as a multiplication after it): one op less, which counts when each op waits for
    its threads on a shared machine."""
    nothing = _NOTHING.get(left.dtype)
    if nothing is None:
        nothing = _NOTHING[left.dtype] = torch.zeros((), dtype=left.dtype)
    return torch.addmm(nothing, left, right, beta=0, alpha=scale)


_NOTHING: dict[torch.dtype, torch.Tensor] = {}  # addmm's ignored input when beta is 0, by dtype


class _SharedInputLora(torch.autograd.Function):
    """k adapters on one input and one frozen base whose output columns are the k layers'
    outputs side by side, computed in `dtype` (x's own without autocast; a dense base already
    in it); arguments after `dtype`: A_1..A_k, then B_1..B_k."""

    @staticmethod
    def forward(ctx, x, base, scaling, dropout_p, dtype, *adapters):
        count = len(adapters) // 2
        ctx.dtypes = x.dtype, adapters[0].dtype
        with torch.autocast(x.device.type, enabled=False):  # the casts are ours
            lora_As = [lora_A.to(dtype) for lora_A in adapters[:count]]
            lora_Bs = [lora_B.to(dtype) for lora_B in adapters[count:]]
            shape = x.shape
            flat = x.reshape(-1, shape[-1]).to(dtype)
            out = _base_matmul(base, flat)
            masks = []
            stacked_A = _rows(lora_As)
            if dropout_p:  # each adapter's draw in turn, as each layer's nn.Dropout draws it
                masks = [torch.empty_like(flat, dtype=torch.bool).bernoulli_(1 - dropout_p)
                         for _ in lora_As]
                down = _columns([_scaled_mm(flat * _dropout_scale(mask, dropout_p, dtype),
                                            lora_A.t(), scaling)
                                 for mask, lora_A in zip(masks, lora_As)])
            else:  # one matmul for every adapter's A
                down = _scaled_mm(flat, stacked_A.t(), scaling)
            stacked_B = _block_diagonal(lora_Bs)
            out.addmm_(down, stacked_B.t())
        ctx.base, ctx.scaling, ctx.dropout_p = base, scaling, dropout_p
        ctx.save_for_backward(flat, down, stacked_A, stacked_B, *masks)
        ctx.sizes = [lora_B.shape[0] for lora_B in lora_Bs]
        return tuple(part.view(*shape[:-1], size)
                     for part, size in zip(out.split(ctx.sizes, dim=1), ctx.sizes))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        # Read once: under activation checkpointing each read unpacks (recomputes) them.
        saved = ctx.saved_tensors
        with torch.autocast(saved[0].device.type, enabled=False):
            grad_x, grad_As, grad_Bs = _backward(ctx, saved, grad_outputs)
        x_dtype, adapter_dtype = ctx.dtypes
        grad_x = None if grad_x is None else grad_x.to(x_dtype)
        grad_As = [None if g is None else g.to(adapter_dtype) for g in grad_As]
        grad_Bs = [None if g is None else g.to(adapter_dtype) for g in grad_Bs]
        return grad_x, None, None, None, None, *grad_As, *grad_Bs


def _backward(ctx, saved: tuple[torch.Tensor, ...], grad_outputs: tuple[torch.Tensor, ...]
              ) -> tuple[torch.Tensor | None, list[torch.Tensor | None],
                         list[torch.Tensor | None]]:
    """`_SharedInputLora`'s gradients of x, the As and the Bs, in the step's dtype."""
    sizes, scaling, dropout_p = ctx.sizes, ctx.scaling, ctx.dropout_p
    count = len(sizes)
    flat, down, stacked_A, stacked_B, *masks = saved
    grad = _columns([g.reshape(-1, g.shape[-1]).to(flat.dtype) for g in grad_outputs])
    grad_down = _scaled_mm(grad, stacked_B, scaling)  # of d A^T, before the scale
    scales = [_dropout_scale(mask, dropout_p, flat.dtype) for mask in masks]
    rank = stacked_A.shape[0] // count
    need = ctx.needs_input_grad
    first_A = 5  # x, base, scaling, dropout_p and dtype come first
    grad_As: list[torch.Tensor | None] = [None] * count
    grad_Bs: list[torch.Tensor | None] = [None] * count
    if any(need[first_A:first_A + count]):
        if scales:
            grad_As = [torch.mm(part.t(), flat * scale)
                       for part, scale in zip(grad_down.split(rank, dim=1), scales)]
        else:
            grad_As = list(torch.mm(grad_down.t(), flat).split(rank))
    if any(need[first_A + count:]):
        # Every grad_out^T down block in one matmul; each B's gradient is its own block.
        blocks = torch.mm(grad.t(), down)
        grad_Bs = [blocks[start:start + size, i * rank:(i + 1) * rank]
                   for i, (start, size) in enumerate(zip(_starts(sizes), sizes))]
    grad_x = None
    if need[0]:
        grad_x = _base_input_grad(ctx.base, grad)
        if scales:
            for part, scale, lora_A in zip(grad_down.split(rank, dim=1), scales,
                                           stacked_A.split(rank)):
                grad_x.add_(torch.mm(part, lora_A).mul_(scale))
        else:  # both paths' gradients of x, summed by the matmul
            grad_x.addmm_(grad_down, stacked_A)
        grad_x = grad_x.view(*grad_outputs[0].shape[:-1], flat.shape[-1])
    return grad_x, grad_As, grad_Bs


def _starts(sizes: list[int]) -> list[int]:
    """Where each of the side-by-side blocks of `sizes` starts."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _columns(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The (tokens, n_i) tensors side by side (one of them as it is)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)


def lora_linear(x: torch.Tensor, base: FrozenBase, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float, dropout_p: float = 0.0,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """`base(x) + scaling * (dropout(x) A^T) B^T` with a frozen `base` (an `nn.Linear` or a
    `DenseWeight` in `dtype`, or a `QuantizedLinear` decoding to it), computed in `dtype`
    (autocast's; x's by default, x and the adapter then of one dtype); `dropout_p` 0 outside
    training."""
    dtype = x.dtype if dtype is None else dtype
    return _SharedInputLora.apply(x, base, scaling, dropout_p, dtype, lora_A, lora_B)[0]


def lora_linears(x: torch.Tensor, base: DenseWeight, adapters: list[tuple[torch.Tensor,
                 torch.Tensor]], scaling: float, dropout_p: float = 0.0,
                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """`lora_linear` for k layers reading the same `x`, whose frozen weights are the rows of
    `base` in order: one matmul for the k bases, one for the k A matrices (without dropout),
    and one for the k B matrices, forward and backward. Returns the k outputs, views into
    one (tokens, sum of out_features) tensor.

    >>> x = torch.randn(3, 8)
    >>> weights = [torch.randn(5, 8), torch.randn(2, 8)]
    >>> adapters = [(torch.randn(4, 8), torch.randn(5, 4)), (torch.randn(4, 8),
    ...             torch.randn(2, 4))]
    >>> outputs = lora_linears(x, DenseWeight(torch.cat(weights), None), adapters, 0.5)
    >>> [bool(torch.allclose(out, x @ w.T + 0.5 * (x @ a.T) @ b.T, atol=1e-4))
    ...  for out, w, (a, b) in zip(outputs, weights, adapters)]
    [True, True]
    """
    lora_As = [lora_A for lora_A, _ in adapters]
    lora_Bs = [lora_B for _, lora_B in adapters]
    dtype = x.dtype if dtype is None else dtype
    return _SharedInputLora.apply(x, base, scaling, dropout_p, dtype, *lora_As, *lora_Bs)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a linear layer on `x` in, or None without autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class CastWeights:
    """A frozen dense weight and bias cast to a lower precision once, and reused while they
    are unchanged: the same tensors (not freed and replaced), at the same address, not written
    to since (`copy_`, `load_state_dict`), of the same dtype and device. See the module doc
    for what it costs.

    >>> layer = torch.nn.Linear(4, 2).requires_grad_(False)
    >>> cast = CastWeights()
    >>> first = cast.dense(DenseWeight(layer.weight, layer.bias), torch.bfloat16)
    >>> first.weight.dtype, cast.dense(DenseWeight(layer.weight, layer.bias),
    ...                                torch.bfloat16).weight is first.weight
    (torch.bfloat16, True)
    >>> _ = layer.weight.mul_(2)  # a change: cast again
    >>> cast.dense(DenseWeight(layer.weight, layer.bias), torch.bfloat16).weight is first.weight
    False
    """

    def __init__(self) -> None:
        self._sources: tuple[weakref.ref, ...] = ()
        self._key: tuple = ()
        self._cast: DenseWeight | None = None

    def __deepcopy__(self, memo: dict) -> CastWeights:
        return CastWeights()  # the copy's weights are tensors of their own: cast at first use

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def empty(self) -> bool:
        """Whether no cast copy is held."""
        return self._cast is None

    def release(self) -> None:
        """Free the cast copy (made again at the next use)."""
        self.__init__()  # type: ignore[misc]

    def dense(self, base: DenseWeight, dtype: torch.dtype) -> DenseWeight:
        """`base` in `dtype`, cast now or earlier."""
        tensors = [t for t in base if t is not None]
        key = (dtype, base.bias is None, *((t.data_ptr(), _version(t), t.dtype, t.device,
                                            t.shape) for t in tensors))
        if (self._cast is None or key != self._key
                or any(ref() is not t for ref, t in zip(self._sources, tensors))):
            with torch.no_grad():
                self._cast = DenseWeight(base.weight.detach().to(dtype),
                                         None if base.bias is None
                                         else base.bias.detach().to(dtype))
            self._sources, self._key = tuple(weakref.ref(t) for t in tensors), key
        return self._cast


def _version(tensor: torch.Tensor) -> int:
    """How many times `tensor` was written in place (-1 for an inference tensor: never)."""
    return -1 if tensor.is_inference() else tensor._version
