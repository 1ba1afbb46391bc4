"""Our tensors under llama.cpp's names and layout, each in the type a quantization gives it.

The name maps are the GGUF loader's key maps (`sftkit.checkpoints.gguf.GGUF_KEYMAPS`, GGUF
names to ours), so reading and writing share one table per architecture: Llama's is the
loader's GGUF -> Hugging Face map composed with Hugging Face -> ours; GPT-2's is llama.cpp's
`gpt2` layout (query, key and value fused in `attn_qkv`, every matrix stored (out, in) like
`nn.Linear`).

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=64,
    ...     n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=96))
    >>> tensors = gguf_tensors(model)
    >>> sorted(tensors)[:3], tensors["blk.0.attn_k.weight"].shape
    (['blk.0.attn_k.weight', 'blk.0.attn_norm.weight', 'blk.0.attn_output.weight'], (32, 64))
    >>> tensor_type("blk.0.attn_norm.weight", (64,), "q8_0").name
    'F32'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sftkit.checkpoints.gguf import GGUF_KEYMAPS
from sftkit.checkpoints.keymaps import UnknownKeyError, convert_from_ours
from sftkit.errors import SftkitError
from sftkit.models.base import DecoderModel

# The GGML type of every matrix, by quantization name (the K-quants are llama.cpp's to make).
MATRIX_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0",
                "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def gguf_tensors(model: DecoderModel) -> dict[str, np.ndarray]:
    """Every tensor of `model` under its GGUF name, float32, in numpy (row-major) shape.

    A tied output head is left out (llama.cpp then reads the token embedding); Llama's q/k rows
    get the order llama.cpp's RoPE expects (`permute_rope_rows`).
    """
    config = model.config
    state = {name: tensor.detach().to(device="cpu", dtype=torch.float32)
             for name, tensor in model.state_dict().items()
             if not (config.tie_embeddings and name == "lm_head.weight")}
    if config.family == "llama" and config.qkv_bias:
        raise SftkitError(f"GGUF export: {config.name or 'the model'} has q/k/v biases, which "
                          "the llama GGUF layout we write does not carry")
    try:
        converted = convert_from_ours(state, GGUF_KEYMAPS[config.family])
    except UnknownKeyError as error:
        raise SftkitError(f"GGUF export: tensor {error.args[0]!r} has no GGUF name (a model "
                          "with adapters must be merged first: sftkit merge)") from None
    tensors = {name: tensor.numpy() for name, tensor in converted.items()}
    if config.family == "llama":
        for name in tensors:
            if name.endswith("attn_q.weight"):
                tensors[name] = permute_rope_rows(tensors[name], config.n_heads)
            elif name.endswith("attn_k.weight"):
                tensors[name] = permute_rope_rows(tensors[name], config.n_kv_heads)
    return tensors


def permute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q_proj/k_proj: the inverse of the loader's
    `unpermute_rope_rows` (each head's halves interleaved, `[a0, b0, a1, b1, ...]`).

    Example:
        >>> rows = np.arange(8).reshape(8, 1)
        >>> permute_rope_rows(rows, num_heads=2).ravel().tolist()
        [0, 2, 1, 3, 4, 6, 5, 7]
        >>> from sftkit.checkpoints.gguf import unpermute_rope_rows
        >>> bool((unpermute_rope_rows(permute_rope_rows(rows, 2), 2) == rows).all())
        True
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise SftkitError(f"cannot apply the RoPE permutation: {rows} rows do not split into "
                          f"{num_heads} heads of an even size")
    head_dim = rows // num_heads
    by_halves = weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
    return np.ascontiguousarray(by_halves.swapaxes(1, 2).reshape(weight.shape))


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> Any:
    """The `GGMLQuantizationType` a tensor is written in for `quant`.

    What llama.cpp's converter keeps in float32 stays float32: vectors (norms, biases) and
    GPT-2's position embedding. A matrix whose rows do not split into the type's blocks falls
    back to f16, as the converter does.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) < 2 or name == "position_embd.weight":
        return GGMLQuantizationType.F32
    wanted = GGMLQuantizationType[MATRIX_TYPES[quant]]
    block_size, _ = GGML_QUANT_SIZES[wanted]
    if shape[-1] % block_size:
        return GGMLQuantizationType.F16
    return wanted


def encoded(tensor: np.ndarray, qtype: Any) -> np.ndarray:
    """`tensor` (float32) in the bytes or dtype GGUFWriter stores for type `qtype`."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(tensor, dtype=np.float32)
    if qtype == GGMLQuantizationType.F16:
        return tensor.astype(np.float16)
    return quantize(np.ascontiguousarray(tensor, dtype=np.float32), qtype)

