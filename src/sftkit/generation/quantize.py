"""int8 weights for decoding on a CPU: the `quantize` option of `generate`, `serve` and the
pipeline's generation stages (`[generate] quantize = "int8"`, `--quantize int8`).

`quantized_for_decoding` returns a copy of the model whose `nn.Linear` layers (every projection
and the output head; a tied head gets its own int8 copy, the token embedding stays as it was)
are `Int8Linear`s: int8 weights with one scale per output channel, each input row quantized to
int8 with its own scale, an int8 matmul with int32 sums (`torch._int_mm`).

Measured (benchmarks/RESULTS.md, "Decode speed against llama.cpp"): since fp32 decoding runs
oneDNN-packed linears (`sftkit.generation.packed`), int8 gains much less over fp32 than it
did over MKL's fp32 (1.5x on the book's 110 test prompts rather than 2-3x on a busy
machine; 0.92x, i.e. slower, on the same machine idle), and its greedy
answers often differ from fp32's (17 of those 110 identical, 7 of the first 40). Rejected
there: PyTorch's dynamic quantization (`quantize_dynamic`, fbgemm), as fast but quantizing a
whole call's input with one scale, so a row's tokens depended on its batch; the weight-only
`torch._weight_int8pack_mm`, 16-60x slower than fp32 at 32 rows on an AVX-512 EPYC with torch
2.13; and a second int8 part per input row (the residual of the first, ~15-bit activations):
17 of 40 answers identical instead of 7, but slower than packed fp32, which is exact.

A row's tokens do not depend on what it is batched with. Off by default.

Example (a tiny random model):
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=64,
    ...     n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=100)).eval()
    >>> int8 = quantized_for_decoding(model, "int8")
    >>> type(int8.lm_head).__name__, type(model.lm_head).__name__   # the original is untouched
    ('Int8Linear', 'Linear')
    >>> int8.lm_head.weight_int8.dtype
    torch.int8
    >>> idx = torch.tensor([[1, 2, 3]])
    >>> bool(torch.allclose(int8(idx), model(idx), atol=0.05))
    True
    >>> quantized_for_decoding(model, "none") is model
    True
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from sftkit.errors import SftkitError
from sftkit.models import Model

QUANTIZE_CHOICES = ("none", "int8")
"""The `quantize` option's values: "none" decodes with the weights as loaded."""


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one scale per output channel) that quantizes each
    input row to int8 with the row's own scale, multiplies in int8 with int32 sums
    (`torch._int_mm`) and scales back: y = (x_q @ w_q.T) * x_scale * w_scale (+ bias).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> linear = nn.Linear(16, 4)
        >>> x = torch.randn(3, 2, 16)
        >>> bool(torch.allclose(Int8Linear(linear)(x), linear(x), atol=0.02))
        True
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        # Stored (in, out) column-major: the layout `_int_mm` reads fastest.
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None])
                             .to(torch.int8).t(), persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        # Each row its own scale: a row's result does not depend on the rows beside it.
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        quantized = torch.round(rows / row_scale).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_int8).float()
        out = out.mul_(row_scale).mul_(self.weight_scale)
        if self.bias is not None:
            out = out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantized_for_decoding(model: Model, quantize: str) -> Model:
    """`model` itself for "none"; for "int8", an eval-mode copy whose linear layers are
    `Int8Linear`s (for generation only: it cannot be trained or saved as a checkpoint)."""
    if quantize not in QUANTIZE_CHOICES:
        raise SftkitError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, "
                          f"got {quantize!r}")
    if quantize == "none":
        return model
    if next(model.parameters()).device.type != "cpu":
        raise SftkitError("quantize = int8 runs CPU int8 kernels: it needs the model on the "
                          "CPU (use quantize = none on a GPU)")
    copy = deepcopy(model).eval()
    _replace_linears(copy)
    return copy


def _replace_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _replace_linears(child)
