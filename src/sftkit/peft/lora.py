"""LoRA (Hu et al., 2021): a frozen linear layer plus a trainable low-rank update.

    y = base(x) + s * B(A(dropout(x)))        A: (r, in_features), B: (out_features, r)

`A` starts random (Kaiming-uniform, as PEFT does) and `B` at zero, so a fresh adapter leaves the
model's output unchanged. The scale `s` is `alpha / r`, or `alpha / sqrt(r)` with rsLoRA
(Kalajdzievski, 2023), which keeps the update's size steady as the rank grows. Only `A` and `B`
train: the base's weight never gets a gradient, so its backward pass computes only the
gradient of the input (one matmul instead of two).

The base is any frozen linear: `nn.Linear` in fp32 or bf16, or a quantized one
(`sftkit.peft.quantized`) that dequantizes blockwise inside its own matmul.

Example:
    >>> import torch
    >>> base = torch.nn.Linear(16, 8)
    >>> layer = LoRALinear(base, LoraSpec(r=4, alpha=8))
    >>> x = torch.randn(2, 16)
    >>> bool(torch.allclose(layer(x), base(x), atol=1e-6))  # B starts at zero
    True
    >>> [name for name, p in layer.named_parameters() if p.requires_grad]
    ['lora_A', 'lora_B']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from sftkit.peft.fused import CastWeights, DenseWeight, FrozenBase, autocast_dtype, lora_linear
from sftkit.peft.quantized import QuantizedLinear


class SharedOutputs(Protocol):
    """What a layer's siblings on one input offer it (`sftkit.peft.shared_input.SharedInput`;
    named here as a protocol so that this module need not import that one, which imports it)."""

    def output(self, member: LoRALinear, x: torch.Tensor) -> torch.Tensor | None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class LoraSpec:
    """The shape of every adapter of a model: rank, alpha, dropout, rsLoRA, DoRA."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    dora: bool = False

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"the LoRA rank must be positive, not {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"the LoRA dropout must be in [0, 1), not {self.dropout}")

    @property
    def scaling(self) -> float:
        """`alpha / r`, or `alpha / sqrt(r)` with rsLoRA.

        >>> LoraSpec(r=16, alpha=32).scaling, LoraSpec(r=16, alpha=32, rslora=True).scaling
        (2.0, 8.0)
        """
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


@runtime_checkable
class Dequantizes(Protocol):
    """A frozen linear that keeps its weight in another form (`sftkit.peft.quantized`)."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole weight (out_features, in_features) in `dtype`."""
        ...


def frozen_weight(base: nn.Module) -> torch.Tensor:
    """The weight of a frozen base layer as a dense tensor (dequantized if it is quantized)."""
    if isinstance(base, Dequantizes):
        return base.dequantize()
    return base.weight  # type: ignore[return-value]


class LoRALinear(nn.Module):
    """A frozen `base` linear layer with a trainable low-rank update (see the module doc)."""

    def __init__(self, base: nn.Module, spec: LoraSpec) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.in_features: int = base.in_features  # type: ignore[assignment]
        self.out_features: int = base.out_features  # type: ignore[assignment]
        self.spec = spec
        self.scaling = spec.scaling
        tensors = [*base.parameters(), *base.buffers()]
        device = tensors[0].device if tensors else None
        # The adapter trains in fp32 whatever the base's dtype (autocast lowers its matmuls).
        self.lora_A = nn.Parameter(torch.empty(spec.r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, spec.r, device=device))
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        #: Siblings reading the same input, computed together (`sftkit.peft.shared_input`).
        self.shared_input: SharedOutputs | None = None
        #: The frozen dense base in autocast's dtype, cast once (`sftkit.peft.fused`).
        self.cast_weights = CastWeights()
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """A random, B zero (PEFT's initialisation): the layer equals its base again."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base's bias (frozen)."""
        return self.base.bias  # type: ignore[return-value]

    def delta_weight(self) -> torch.Tensor:
        """The update `s * B @ A` (out_features, in_features), differentiable."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight `W + s * B @ A`, differentiable in the adapter: what a merge
        writes, and what the fused head + cross-entropy uses when the head carries an
        adapter."""
        base = frozen_weight(self.base)
        return base + self.delta_weight().to(base.dtype)

    def lora_path(self, x: torch.Tensor) -> torch.Tensor:
        """`s * B(A(dropout(x)))`, in the adapter's dtype (or autocast's)."""
        dropped = self.dropout(x)
        return F.linear(F.linear(dropped.to(self.lora_A.dtype), self.lora_A),
                        self.lora_B) * self.scaling

    def fused_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype `sftkit.peft.fused` computes this call in, or None where it cannot run.
        It needs a frozen base, dense or quantized. Without autocast: x and the adapter of one
        dtype, and a dense base's weight of it too (a quantized base decodes to x's). Under
        autocast: its dtype, the tensors ones it casts (floating, not fp64), and a quantized
        base only under bf16 (the dtype its own forward then computes in)."""
        base = self.base
        if not isinstance(base, nn.Linear | QuantizedLinear) or (
                isinstance(base, nn.Linear) and base.weight.requires_grad):
            return None
        dtype = autocast_dtype(x)
        if dtype is None:
            if x.dtype != self.lora_A.dtype or (isinstance(base, nn.Linear)
                                                and base.weight.dtype != x.dtype):
                return None
            return x.dtype
        if isinstance(base, QuantizedLinear):
            return dtype if dtype == torch.bfloat16 and _autocastable(x, self.lora_A) else None
        return dtype if _autocastable(x, self.lora_A, base.weight) else None

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """`base(x) + lora_path(x)` as one autograd step, without extra passes over the
        activations and keeping x and a one-byte dropout mask for backward
        (`sftkit.peft.fused`); None where it cannot run (`fused_dtype`)."""
        dtype = self.fused_dtype(x)
        if dtype is None:
            return None
        base: FrozenBase = self.base  # type: ignore[assignment]  # as `fused_dtype` found
        if isinstance(base, nn.Linear) and autocast_dtype(x) is not None:
            base = self.cast_weights.dense(DenseWeight(base.weight, base.bias), dtype)
        dropout = self.spec.dropout if self.training else 0.0
        return lora_linear(x, base, self.lora_A, self.lora_B, self.scaling, dropout, dtype)

    def release_cast_weights(self) -> None:
        """Free the low-precision copy of the frozen base kept for autocast (and its
        siblings', `sftkit.peft.shared_input`); made again at the next call that needs it."""
        self.cast_weights.release()
        if self.shared_input is not None:
            self.shared_input.release()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input is not None:
            shared = self.shared_input.output(self, x)
            if shared is not None:
                return shared
        fused = self.fused_forward(x)
        if fused is not None:
            return fused
        result = self.base(x)
        return result + self.lora_path(x).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.spec.r}, scaling={self.scaling:g}"


def _autocastable(*tensors: torch.Tensor) -> bool:
    """Whether autocast casts these tensors (floating point, not fp64)."""
    return all(t.is_floating_point() and t.dtype != torch.float64 for t in tensors)


def release_cast_weights(model: nn.Module) -> int:
    """Free every adapted layer's low-precision copy of its frozen base (`sftkit.peft.fused`:
    what training under autocast keeps), e.g. once training is done; returns how many adapted
    layers it went through.

    >>> model = torch.nn.Sequential(LoRALinear(torch.nn.Linear(8, 8), LoraSpec(r=2)))
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     model(torch.randn(2, 8)).dtype
    torch.bfloat16
    >>> release_cast_weights(model)
    1
    """
    layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
    for layer in layers:
        layer.release_cast_weights()
    return len(layers)
