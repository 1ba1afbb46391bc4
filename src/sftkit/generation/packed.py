"""fp32 linear layers with their weights prepacked for oneDNN, for generation on a CPU.

PyTorch's fp32 `F.linear` on a CPU runs MKL's GEMM, which on this project's AMD EPYC
benchmark machine reached 30–50 GFLOPS at decode shapes (1–64 rows); oneDNN's GEMM on a weight
reordered once into its blocked layout ran the same products 2–3× faster (benchmarks/
RESULTS.md, "Decode speed against llama.cpp"). A `ContinuousBatcher` therefore decodes with
`packed_for_decoding(model)`: a copy of the model that shares every parameter with it, except
that each `nn.Linear` is a `PackedLinear` holding a packed copy of its weight. The packed
weights cost one more copy of the linear weights for as long as the batcher lives.

The result is the same fp32 product summed in another order: logits differ from MKL's in the
last bits (about 1e-6 relative), as MKL's own differ between batch sizes.

Example (a tiny random model):
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=64,
    ...     n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=100)).eval()
    >>> packed = packed_for_decoding(model)
    >>> type(packed.lm_head).__name__ if can_pack(model) else "PackedLinear"
    'PackedLinear'
    >>> packed.tok_emb.weight is model.tok_emb.weight     # shared, not copied
    True
    >>> idx = torch.tensor([[1, 2, 3]])
    >>> bool(torch.allclose(packed(idx), model(idx), atol=1e-5))
    True
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from sftkit.models import Model
from sftkit.models.matmul import Linear

#: The batch size oneDNN is told to expect when it chooses the packed layout (any batch size
#: works; measured at 1–64 rows, a hint of 32 was as fast as or faster than a hint of 1).
PACK_HINT = 32


def can_pack(model: Model) -> bool:
    """Whether `packed_for_decoding` packs: an fp32 model on a CPU, oneDNN available."""
    weight = model.tok_emb.weight
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


class PackedLinear(nn.Module):
    """An `nn.Linear` (inference only) whose weight oneDNN reordered once into its own layout.

    `weight` and `bias` stay the original layer's tensors (a wrapper such as a LoRA layer
    may read them); the product uses the packed copy.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> linear = nn.Linear(16, 4)
        >>> x = torch.randn(3, 2, 16)
        >>> bool(torch.allclose(PackedLinear(linear)(x), linear(x), atol=1e-6))
        True
    """

    packed_weight: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_HINT)
        self.register_buffer("packed_weight", packed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not x.is_contiguous():
            return F.linear(x, self.weight, self.bias)  # oneDNN's packed op has no backward
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")


def packed_for_decoding(model: Model) -> Model:
    """`model` itself when it cannot be packed (`can_pack`); else an eval-mode copy sharing its
    parameters whose `nn.Linear` layers are `PackedLinear`s (for generation only)."""
    if not can_pack(model):
        return model
    shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    copy = deepcopy(model, memo=shared).eval()
    _pack_linears(copy)
    return copy


def _pack_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        # Not other subclasses of nn.Linear: they may compute something else.
        if isinstance(child, nn.Linear) and type(child) in (nn.Linear, Linear):
            setattr(module, name, PackedLinear(child))
        else:
            _pack_linears(child)
