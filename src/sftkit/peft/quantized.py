"""A frozen linear layer whose weight stays small: bf16, int8 or NF4 blocks, or a GGUF's own.

QLoRA (Dettmers et al., 2023) trains adapters on a base kept in 4 bits. The base never trains,
so it needs no fp32 master copy: only its matmuls need its values, and those can be decoded a
few rows at a time, just before use. `QuantizedLinear` keeps the weight in one of these forms
(`FORMATS`), all of them buffers (so `.to()` and `state_dict` carry them), none a parameter:

- `bf16`: the weight rounded to bfloat16 (2 bytes a value);
- `int8`: blocks of 64 inputs of a row share one absmax scale (fp16); each value is
  `round(127 * w / absmax)` (8.25 bits a value);
- `nf4`: the same blocks, each value one of QLoRA's 16 NormalFloat levels (quantiles of a
  normal distribution, so most levels sit where most weights are), two codes a byte
  (4.25 bits a value);
- `gguf`: the rows of a GGUF tensor as the file stores them (Q8_0, Q4_0, Q4_1, ...: every type
  the `gguf` package decodes), so a quantized checkpoint stays quantized instead of being
  dequantized at load.

The matmul (`forward`, and in backward the gradient of the input: the weight never gets one)
decodes `ROWS_PER_CHUNK`-sized slices of output rows into one buffer reused slice after slice,
so the whole fp32 weight never exists. Under bf16 autocast it runs in bf16, else in fp32.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> linear = torch.nn.Linear(128, 32)
    >>> layer = QuantizedLinear.quantize(linear, "nf4")
    >>> [name for name, _ in layer.named_buffers()]
    ['codes', 'scales', 'bias']
    >>> error = (layer.dequantize() - linear.weight).abs().max() / linear.weight.abs().max()
    >>> bool(error < 0.16), list(layer.parameters())  # half the widest gap between levels
    (True, [])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftkit.models import matmul
from sftkit.models.base import DecoderModel

#: The forms a frozen base can take (`lora.base_dtype`, besides "fp32": an `nn.Linear`).
FORMATS = ("bf16", "int8", "nf4", "gguf")
#: Values of a row that share one scale in int8 and nf4 (QLoRA's block size).
BLOCK = 64
#: How many weight values one decoded slice holds at most (16 MiB in fp32).
CHUNK_VALUES = 1 << 22

#: QLoRA's NormalFloat-4 levels (bitsandbytes' table): the quantiles of N(0, 1) scaled to
#: [-1, 1], with an exact zero.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
              0.33791524171829224, 0.44070982012939453, 0.5626170039176941,
              0.7229568362236023, 1.0)


def _blocks_of(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` (out, in) as (out, blocks, BLOCK), padded with zeros to whole blocks, and
    each block's absmax (out, blocks)."""
    rows, columns = weight.shape
    padded = F.pad(weight.float(), (0, -columns % BLOCK))
    blocks = padded.view(rows, -1, BLOCK)
    return blocks, blocks.abs().amax(dim=-1)


def _quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    blocks, absmax = _blocks_of(weight)
    scales = (absmax / 127).to(torch.float16)
    codes = torch.round(blocks / scales.float().clamp_min(1e-30)[..., None]).clamp_(-127, 127)
    return {"codes": codes.to(torch.int8).flatten(1), "scales": scales}


def _quantize_nf4(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    blocks, absmax = _blocks_of(weight)
    scales = absmax.to(torch.float16)
    normalised = blocks / scales.float().clamp_min(1e-30)[..., None]
    levels = torch.tensor(NF4_LEVELS)
    # The nearest level: search among the midpoints between neighbouring levels.
    codes = torch.bucketize(normalised, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    pairs = codes.flatten(1).view(weight.shape[0], -1, 2)
    return {"codes": pairs[..., 0] << 4 | pairs[..., 1], "scales": scales}


def _decode_int8(buffers: dict[str, torch.Tensor], rows: slice, dtype: torch.dtype,
                 out: torch.Tensor) -> None:
    codes, scales = buffers["codes"][rows], buffers["scales"][rows]
    blocks = out.view(codes.shape[0], -1, BLOCK)
    torch.mul(codes.view_as(blocks).to(dtype), scales.to(dtype)[..., None], out=blocks)


def _decode_nf4(buffers: dict[str, torch.Tensor], rows: slice, dtype: torch.dtype,
                out: torch.Tensor) -> None:
    packed, scales = buffers["codes"][rows], buffers["scales"][rows]
    levels = torch.tensor(NF4_LEVELS, dtype=dtype, device=packed.device)
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).flatten(1).long()
    blocks = out.view(packed.shape[0], -1, BLOCK)
    torch.mul(levels[codes].view_as(blocks), scales.to(dtype)[..., None], out=blocks)


def _decode_bf16(buffers: dict[str, torch.Tensor], rows: slice, dtype: torch.dtype,
                 out: torch.Tensor) -> None:
    out.copy_(buffers["weight"][rows])


def gguf_decoder(tensor_type: int) -> Callable[..., None]:
    """Decoding of GGUF rows of one quantization type, by the `gguf` package's own code (the
    same that `sftkit.checkpoints.gguf` dequantizes whole tensors with)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    kind = GGMLQuantizationType(tensor_type)

    def decode(buffers: dict[str, torch.Tensor], rows: slice, dtype: torch.dtype,
               out: torch.Tensor) -> None:
        data = buffers["blocks"][rows]
        values = dequantize(data.cpu().numpy(), kind)
        out.copy_(torch.from_numpy(values).view(out.shape[0], -1))

    return decode


DECODERS: dict[str, Callable[..., None]] = {"int8": _decode_int8, "nf4": _decode_nf4,
                                            "bf16": _decode_bf16}
QUANTIZERS: dict[str, Callable[[torch.Tensor], dict[str, torch.Tensor]]] = {
    "int8": _quantize_int8, "nf4": _quantize_nf4,
    "bf16": lambda weight: {"weight": weight.detach().to(torch.bfloat16)}}


class _DequantizedMatmul(torch.autograd.Function):
    """`x @ W.T` with W decoded slice by slice; backward gives the input's gradient only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        out = layer.matmul(x.reshape(-1, layer.in_features), with_bias=False)
        return out.view(*x.shape[:-1], layer.out_features)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer: QuantizedLinear = ctx.layer
        grad_input = layer.input_grad(grad_output.reshape(-1, layer.out_features))
        return grad_input.view(*grad_output.shape[:-1], layer.in_features), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer holding its weight in `format` (see the module doc); build one
    with `quantize` (from an `nn.Linear` or a weight) or `from_gguf_rows`."""

    def __init__(self, in_features: int, out_features: int, format: str,
                 buffers: dict[str, torch.Tensor], bias: torch.Tensor | None,
                 tensor_type: int | None = None) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"unknown quantized format {format!r}; choose from "
                             f"{', '.join(FORMATS)}")
        self.in_features, self.out_features, self.format = in_features, out_features, format
        self.tensor_type = tensor_type
        if format == "gguf" and tensor_type is None:
            raise ValueError("a gguf-format layer needs the GGUF tensor_type of its rows")
        self._decode = DECODERS[format] if tensor_type is None else gguf_decoder(tensor_type)
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self.bias: torch.Tensor | None
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def quantize(cls, linear: nn.Linear | torch.Tensor, format: str) -> QuantizedLinear:
        """`linear` (a layer, or a weight (out, in) without bias) kept in `format`: bf16,
        int8 or nf4."""
        if format not in QUANTIZERS:
            raise ValueError(f"cannot quantize to {format!r}; choose from "
                             f"{', '.join(QUANTIZERS)} (gguf blocks come from a GGUF file)")
        weight = linear.weight if isinstance(linear, nn.Linear) else linear
        bias = linear.bias if isinstance(linear, nn.Linear) else None
        out_features, in_features = weight.shape
        with torch.no_grad():
            buffers = QUANTIZERS[format](weight.detach())
        return cls(in_features, out_features, format, buffers, bias)

    @classmethod
    def from_gguf_rows(cls, blocks: torch.Tensor, tensor_type: int, in_features: int,
                       bias: torch.Tensor | None = None) -> QuantizedLinear:
        """A layer holding a GGUF tensor's rows as stored: `blocks` (out, bytes a row) uint8,
        of the `GGMLQuantizationType` `tensor_type`."""
        return cls(in_features, blocks.shape[0], "gguf", {"blocks": blocks}, bias,
                   tensor_type=int(tensor_type))

    def _buffers_by_name(self) -> dict[str, torch.Tensor]:
        return {name: tensor for name, tensor in self.named_buffers(recurse=False)
                if tensor is not None}

    def row_slices(self, dtype: torch.dtype):
        """Yield (rows, weight[rows] decoded to `dtype`): slices of at most `CHUNK_VALUES`
        values, each decoded into the same buffer (valid until the next one)."""
        buffers = self._buffers_by_name()
        padded = -(-self.in_features // BLOCK) * BLOCK if self.format in ("int8", "nf4") \
            else self.in_features
        step = max(1, CHUNK_VALUES // padded)
        device = next(iter(buffers.values())).device
        buffer = torch.empty(min(step, self.out_features) * padded, dtype=dtype, device=device)
        for start in range(0, self.out_features, step):
            rows = slice(start, min(start + step, self.out_features))
            decoded = buffer[: (rows.stop - start) * padded].view(-1, padded)
            self._decode(buffers, rows, dtype, decoded)
            yield rows, decoded[:, : self.in_features]

    @torch.no_grad()
    def matmul(self, flat: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """`flat @ W.T (+ bias)` for `flat` (tokens, in_features), in flat's dtype, W decoded
        slice by slice (no autograd: `forward` and `sftkit.peft.fused` give the backward)."""
        out = flat.new_empty(flat.shape[0], self.out_features)
        for rows, weight in self.row_slices(flat.dtype):
            out[:, rows] = matmul.mm(flat, weight.t())
        if with_bias and self.bias is not None:
            out += self.bias.to(out.dtype)
        return out

    @torch.no_grad()
    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """`grad @ W` for `grad` (tokens, out_features): the input's gradient."""
        grad_input = grad.new_zeros(grad.shape[0], self.in_features)
        for rows, weight in self.row_slices(grad.dtype):
            matmul.addmm_(grad_input, grad[:, rows], weight)
        return grad_input

    @torch.no_grad()
    def packed_values(self) -> int:
        """The values the weight and bias stand for (`DecoderModel.num_parameters` counts
        them)."""
        return self.in_features * self.out_features + (0 if self.bias is None
                                                       else self.bias.numel())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole weight (out_features, in_features) in `dtype` (for merging and tests)."""
        device = next(iter(self._buffers_by_name().values())).device
        weight = torch.empty(self.out_features, self.in_features, dtype=dtype, device=device)
        for rows, decoded in self.row_slices(dtype):
            weight[rows] = decoded
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32
        if torch.is_autocast_enabled(x.device.type) and \
                torch.get_autocast_dtype(x.device.type) == torch.bfloat16:
            dtype = torch.bfloat16
        with torch.autocast(x.device.type, enabled=False):
            out = _DequantizedMatmul.apply(x.to(dtype), self)
            return out if self.bias is None else out + self.bias.to(dtype)

    def extra_repr(self) -> str:
        kind = self.format if self.tensor_type is None else f"gguf type {self.tensor_type}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def block_linears(model: DecoderModel) -> dict[str, nn.Linear]:
    """Every `nn.Linear` of the model's blocks (never the token embedding or the head), by
    name relative to the model."""
    return {f"blocks.{name}": module for name, module in model.blocks.named_modules()
            if isinstance(module, nn.Linear)}


def quantize_model(model: DecoderModel, base_dtype: str) -> int:
    """Replace every linear of `model`'s blocks by a frozen `QuantizedLinear` in `base_dtype`
    ("fp32" changes nothing), in place; returns how many were replaced. The token embedding and
    the head (often tied to it) stay as they are. Apply LoRA afterwards, as usual.

    Example:
        >>> from sftkit.models import ModelConfig, build_model
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=64,
        ...                                           n_heads=4, vocab_size=64))
        >>> quantize_model(model, "int8"), type(model.blocks[0].mlp.fc).__name__
        (12, 'QuantizedLinear')
    """
    if base_dtype == "fp32":
        return 0
    if base_dtype not in QUANTIZERS:
        raise ValueError(f"cannot quantize a loaded model to {base_dtype!r}; choose from fp32, "
                         f"{', '.join(QUANTIZERS)} (gguf: load a GGUF file with "
                         "base_dtype='gguf')")
    replaced = block_linears(model)
    for name, linear in replaced.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantizedLinear.quantize(linear, base_dtype))
    return len(replaced)


@torch.no_grad()
def dequantize_model(model: DecoderModel) -> int:
    """Replace every `QuantizedLinear` of `model` (adapted or not) by an fp32 `nn.Linear`
    holding its decoded weight, in place; returns how many. What a model kept quantized needs
    before it is saved as a plain checkpoint (a LoRA merge replaces only the adapted layers).

    Example:
        >>> from sftkit.models import ModelConfig, build_model
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=64,
        ...                                           n_heads=4, vocab_size=64))
        >>> quantize_model(model, "nf4"), dequantize_model(model), dequantize_model(model)
        (6, 6, 0)
    """
    replaced = [(name, module) for name, module in model.named_modules()
                if isinstance(module, QuantizedLinear)]
    for name, layer in replaced:
        weight = layer.dequantize()
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=weight.device)
        linear.weight.copy_(weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return len(replaced)
