"""Read a llama.cpp GGUF file as a Hugging Face checkpoint: config, weights, tokenizer.

A GGUF holds everything a model needs in one file, under llama.cpp's names and layout. We turn
it into what a Hugging Face directory would hold (`LlamaForCausalLM` for the `llama`
architecture, `GPT2LMHeadModel` for `gpt2`), so one loader (`sftkit.checkpoints.hf`) serves
both sources:

- `hf_config`: the `config.json` fields, from the `llama.*` / `gpt2.*` metadata;
- `state_dict`: HF tensor names, float32, HF shapes (every quantization type the `gguf` package
  can dequantize), with the rotary permutation llama.cpp applies to Llama's q/k undone and
  GPT-2's matrices transposed back to HF's Conv1D (in, out) layout;
- `tokenizer`: the byte-level BPE from `tokenizer.ggml.*`, rebuilt with HF `tokenizers`.

The GGUF key maps (`GGUF_KEYMAPS`, GGUF name -> ours) live here too, so the GGUF writer
(`sftkit.export`) and this reader share one table per architecture.

Example:
    >>> gguf_to_hf_key("blk.0.attn_k.weight"), hf_to_gguf_key("model.norm.weight")
    ('model.layers.0.self_attn.k_proj.weight', 'output_norm.weight')
    >>> GGUF_TO_HF_BY_ARCHITECTURE["gpt2"]["blk.{}.attn_qkv.weight"]
    'h.{}.attn.c_attn.weight'

`read_gguf(path)` reads a whole file (the embedded SmolLM2: 272 tensors, dequantized in about
5 s); `sftkit.tokenizers.read_gguf_tokenizer` reads only its tokenizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftkit.checkpoints.hf import config_from_hf
from sftkit.checkpoints.keymaps import (
    GPT2_HF,
    HF_KEYMAPS,
    LLAMA_HF,
    KeyMap,
    UnknownKeyError,
    get_mapped_key,
    layer_template,
)
from sftkit.checkpoints.weights import expected_shapes
from sftkit.errors import SftkitError
from sftkit.tokenizers.gguf import (
    metadata_values,
    open_gguf_reader,
    required_field,
    tokenizer_from_gguf_metadata,
)
from sftkit.tokenizers.hf import HFTokenizer

# GGUF tensor name -> HF `LlamaForCausalLM` name; `{}` is the layer index. Declarative and
# invertible (see `HF_TO_GGUF`), looked up through the key maps' one templating mechanism
# (`get_mapped_key`), which raises on anything unknown instead of silently dropping a tensor.
GGUF_TO_HF: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
HF_TO_GGUF: dict[str, str] = {hf: gguf_name for gguf_name, hf in GGUF_TO_HF.items()}

LLAMA_GGUF = KeyMap(layout="GGUF", family="llama",
                    to_ours={name: LLAMA_HF.to_ours[hf] for name, hf in GGUF_TO_HF.items()})

# llama.cpp's `gpt2` layout: query, key and value fused in `attn_qkv`, every matrix stored
# (out, in) like `nn.Linear`.
GPT2_GGUF = KeyMap(
    layout="GGUF",
    family="gpt2",
    to_ours={
        "token_embd.weight": "tok_emb.weight",
        "position_embd.weight": "pos_emb.weight",
        "blk.{}.attn_norm.weight": "blocks.{}.attn_norm.weight",
        "blk.{}.attn_norm.bias": "blocks.{}.attn_norm.bias",
        "blk.{}.attn_qkv.weight": ("blocks.{}.attn.q_proj.weight", "blocks.{}.attn.k_proj.weight",
                                   "blocks.{}.attn.v_proj.weight"),
        "blk.{}.attn_qkv.bias": ("blocks.{}.attn.q_proj.bias", "blocks.{}.attn.k_proj.bias",
                                 "blocks.{}.attn.v_proj.bias"),
        "blk.{}.attn_output.weight": "blocks.{}.attn.out_proj.weight",
        "blk.{}.attn_output.bias": "blocks.{}.attn.out_proj.bias",
        "blk.{}.ffn_norm.weight": "blocks.{}.mlp_norm.weight",
        "blk.{}.ffn_norm.bias": "blocks.{}.mlp_norm.bias",
        "blk.{}.ffn_up.weight": "blocks.{}.mlp.fc.weight",
        "blk.{}.ffn_up.bias": "blocks.{}.mlp.fc.bias",
        "blk.{}.ffn_down.weight": "blocks.{}.mlp.proj.weight",
        "blk.{}.ffn_down.bias": "blocks.{}.mlp.proj.bias",
        "output_norm.weight": "final_norm.weight",
        "output_norm.bias": "final_norm.bias",
        "output.weight": "lm_head.weight",
    },
)

GGUF_KEYMAPS: dict[str, KeyMap] = {"gpt2": GPT2_GGUF, "llama": LLAMA_GGUF}


def _gguf_to_hf(gguf_map: KeyMap, hf_map: KeyMap) -> dict[str, str]:
    """GGUF name -> HF name, composed from the two layouts' maps to ours. Both fuse q/k/v in
    the same order, so a fused GGUF tensor is the HF one (transposed, for GPT-2's Conv1D). A
    tensor HF does not store (GPT-2's untied head) has no entry."""
    from_ours = hf_map.from_ours()
    return {gguf_name: from_ours[ours] for gguf_name, ours in gguf_map.to_ours.items()
            if ours is not None and ours in from_ours}


GGUF_TO_HF_BY_ARCHITECTURE: dict[str, dict[str, str]] = {
    "llama": GGUF_TO_HF, "gpt2": _gguf_to_hf(GPT2_GGUF, GPT2_HF)}
SUPPORTED_ARCHITECTURES = tuple(GGUF_TO_HF_BY_ARCHITECTURE)


@dataclass
class GGUFCheckpoint:
    """What a GGUF file holds, in Hugging Face terms (see the module docstring)."""

    path: Path
    hf_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer: HFTokenizer
    metadata: dict[str, Any] = field(default_factory=dict)


def gguf_to_hf_key(name: str, source: str = "GGUF", architecture: str = "llama") -> str:
    """The HF name of a GGUF tensor of `architecture` (llama, gpt2); unknown names raise.

    Example:
        >>> gguf_to_hf_key("blk.3.ffn_gate.weight")
        'model.layers.3.mlp.gate_proj.weight'
        >>> gguf_to_hf_key("blk.3.ffn_up.weight", architecture="gpt2")
        'h.3.mlp.c_fc.weight'
    """
    return _mapped_key(name, GGUF_TO_HF_BY_ARCHITECTURE[architecture], source)


def _mapped_key(key: str, table: Mapping[str, str], source: str) -> str:
    try:
        return str(get_mapped_key(key, table))
    except UnknownKeyError:
        raise SftkitError(f"{source}: unknown tensor {key!r}; known: "
                          f"{', '.join(sorted(table))}") from None


def hf_to_gguf_key(name: str, source: str = "HF state dict") -> str:
    """The GGUF name of an HF tensor; unknown names raise.

    Example:
        >>> hf_to_gguf_key("model.layers.3.self_attn.q_proj.weight")
        'blk.3.attn_q.weight'
    """
    return _mapped_key(name, HF_TO_GGUF, source)


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a `llama` or `gpt2` GGUF file: HF config, float32 HF state dict, tokenizer.

    Every tensor is dequantized to float32 (a 135M model takes about 0.55 GB) and checked
    against the shape the config implies.

    Example:
        >>> read_gguf("absent.gguf")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: GGUF file not found: absent.gguf
    """
    checkpoint, tensors = stream_gguf(path)
    checkpoint.state_dict = {name: t for name, t in tensors if isinstance(t, torch.Tensor)}
    return checkpoint


def stream_gguf(path: str | Path, keep_rows: Callable[[str], bool] = lambda name: False
                ) -> tuple[GGUFCheckpoint, Iterator[tuple[str, torch.Tensor | GGUFRows]]]:
    """`read_gguf` without its state dict (left empty): the HF-named tensors come one at a
    time from the iterator, so no more than one is ever dequantized at once; the tensors whose
    HF name `keep_rows` accepts come as `GGUFRows`, kept as the file stores them."""
    path = Path(path)
    reader = open_gguf_reader(path)
    values = metadata_values(reader, path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    hf_config = _hf_config(values, tensors, path)
    checkpoint = GGUFCheckpoint(
        path=path,
        hf_config=hf_config,
        state_dict={},
        tokenizer=tokenizer_from_gguf_metadata(values, source=str(path), name=path.stem),
        metadata=_summary(values, tensors),
    )
    return checkpoint, _hf_tensors(tensors, hf_config, path, keep_rows)


def _float32_as_written(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal
    that rounds to the same float32 is what the converter was given, and what config.json says."""
    return float(str(np.float32(value)))


def _hf_config(values: Mapping[str, Any], tensors: Mapping[str, Any], path: Path) -> dict:
    """The `config.json` of the equivalent HF model, from the `<architecture>.*` metadata."""
    architecture = required_field(values, "general.architecture", path)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise SftkitError(f"{path}: architecture {architecture!r} is not supported; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if "token_embd.weight" not in tensors:
        raise SftkitError(f"{path}: tensor 'token_embd.weight' is missing")
    # The embedding's row count is the truth; the metadata field is optional in older files.
    vocab_size = int(tensors["token_embd.weight"].shape[-1])
    fields = _Fields(values, architecture, path)
    config = _gpt2_hf_config(fields, tensors, path) if architecture == "gpt2" \
        else _llama_hf_config(fields, tensors, path)
    config["vocab_size"] = vocab_size
    for name in ("bos", "eos", "padding"):
        token_id = values.get(f"tokenizer.ggml.{name}_token_id")
        config_key = "pad_token_id" if name == "padding" else f"{name}_token_id"
        config[config_key] = None if token_id is None else int(token_id)
    return config


@dataclass(frozen=True)
class _Fields:
    """The `<architecture>.*` metadata fields of one file."""

    values: Mapping[str, Any]
    architecture: str
    path: Path

    def required(self, key: str) -> Any:
        return required_field(self.values, f"{self.architecture}.{key}", self.path)

    def optional(self, key: str, default: Any) -> Any:
        return self.values.get(f"{self.architecture}.{key}", default)


def _gpt2_hf_config(fields: _Fields, tensors: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """A `GPT2LMHeadModel`'s config; its head is always the token embedding."""
    if "output.weight" in tensors:
        raise SftkitError(f"{path}: tensor 'output.weight' is an untied GPT-2 output head, "
                          "which a GPT2LMHeadModel (and sftkit's GPT-2) does not carry")
    context_length = int(fields.required("context_length"))
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": int(fields.required("embedding_length")),
        "n_layer": int(fields.required("block_count")),
        "n_head": int(fields.required("attention.head_count")),
        "n_inner": int(fields.required("feed_forward_length")),
        "n_positions": context_length,
        "n_ctx": context_length,
        "layer_norm_epsilon": _float32_as_written(fields.required("attention.layer_norm_epsilon")),
        "activation_function": "gelu_new",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def _llama_hf_config(fields: _Fields, tensors: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """A `LlamaForCausalLM`'s config."""
    required, optional = fields.required, fields.optional
    hidden_size = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(optional("attention.head_count_kv", num_heads))
    head_dim = int(optional("attention.key_length",
                            optional("rope.dimension_count", hidden_size // num_heads)))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": int(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _float32_as_written(required("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_as_written(optional("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(fields.values, fields.architecture, path),
        "max_position_embeddings": int(required("context_length")),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def _rope_scaling(values: Mapping[str, Any], architecture: str, path: Path) -> dict | None:
    kind = values.get(f"{architecture}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        factor = _float32_as_written(values[f"{architecture}.rope.scaling.factor"])
        return {"rope_type": "linear", "factor": factor}
    raise SftkitError(f"{path}: RoPE scaling {kind!r} is not supported (only linear)")


@dataclass(frozen=True)
class GGUFRows:
    """A tensor's rows as a GGUF file stores them: `blocks` (rows, bytes a row) uint8 of the
    `GGMLQuantizationType` `tensor_type` (`sftkit.peft.quantized` decodes them per matmul)."""

    blocks: torch.Tensor
    tensor_type: int


def _hf_tensors(tensors: Mapping[str, Any], config: Mapping[str, Any], path: Path,
                keep_rows: Callable[[str], bool]
                ) -> Iterator[tuple[str, torch.Tensor | GGUFRows]]:
    # Every tensor's HF shape, from the one shape table. RoPE scaling changes no shape, and
    # our models refuse it later with a clear message.
    model_config = config_from_hf({**config, "rope_scaling": None}, name=str(path))
    hf_map = HF_KEYMAPS[model_config.family]
    expected = expected_shapes(model_config, hf_map)
    seen = set()
    for gguf_name, tensor in tensors.items():
        hf_name = gguf_to_hf_key(gguf_name, source=str(path), architecture=model_config.family)
        if hf_name not in expected:
            raise SftkitError(f"{path}: tensor {gguf_name!r} ({hf_name}) does not belong to a "
                              f"{model_config.n_layers}-layer model")
        shape = tuple(int(dim) for dim in reversed(tensor.shape))
        # GPT-2's Conv1D stores (in, out); GGUF, like nn.Linear, (out, in).
        transposed = layer_template(hf_name)[0] in hf_map.transposed
        hf_shape = shape[::-1] if transposed else shape
        if hf_shape != expected[hf_name]:
            raise SftkitError(f"{path}: tensor {gguf_name!r} ({hf_name}) has shape "
                              f"{hf_shape}, expected {expected[hf_name]}")
        # Blocks cannot be transposed: a Conv1D weight is always dequantized.
        kept = keep_rows(hf_name) and not transposed
        # A row's blocks are bytes along the input dimension: rows permute as values do.
        weight = np.array(tensor.data).view(np.uint8).reshape(shape[0], -1) if kept \
            else _dequantized(tensor, path)
        if transposed:
            weight = np.ascontiguousarray(weight.T)
        if hf_name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_attention_heads"])
        elif hf_name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_key_value_heads"])
        seen.add(hf_name)
        yield hf_name, (GGUFRows(torch.from_numpy(weight), int(tensor.tensor_type)) if kept
                        else torch.from_numpy(weight))
    missing = sorted(set(expected) - seen)
    if missing:
        raise SftkitError(f"{path}: missing tensors {', '.join(missing)}")


def _dequantized(tensor: Any, path: Path) -> np.ndarray:
    """One tensor as a writable float32 array in HF (row-major) shape.

    GGUF lists dimensions fastest-first (ne0 = columns), the reverse of numpy/torch order.
    """
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as error:
        raise SftkitError(f"{path}: tensor {tensor.name!r} uses quantization type "
                          f"{tensor.tensor_type.name}, which the gguf package cannot "
                          "dequantize") from error
    shape = tuple(int(dim) for dim in reversed(tensor.shape))
    # F32 comes back as a read-only view of the memory-mapped file; torch needs its own copy.
    return np.array(values, dtype=np.float32, copy=not values.flags.writeable).reshape(shape)


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo the row order llama.cpp's converter gives q_proj/k_proj.

    HF Llama rotates the two halves of each head (`rotate_half`); llama.cpp rotates adjacent
    pairs, so its converter interleaves each head's rows: head rows `[a0..a(d/2-1), b0..]`
    become `[a0, b0, a1, b1, ...]`. Reading the rows back as (head, pair, half) and swapping the
    last two axes restores HF's order. `num_heads` is the number of query heads for q_proj and
    of key/value heads for k_proj.

    Example:
        >>> unpermute_rope_rows(np.array([[0], [2], [1], [3]]), num_heads=1).ravel().tolist()
        [0, 1, 2, 3]
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise SftkitError(f"cannot undo the RoPE permutation: {rows} rows do not split into "
                          f"{num_heads} heads of an even size")
    head_dim = rows // num_heads
    by_pairs = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(by_pairs.swapaxes(1, 2).reshape(weight.shape))


def _summary(values: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    from gguf import LlamaFileType

    file_type = values.get("general.file_type")
    try:
        quantization = LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:  # a file type newer than the installed gguf package
        quantization = f"file_type {file_type}"
    summary = {
        "name": values.get("general.name"),
        "architecture": values.get("general.architecture"),
        "quantization": quantization,
        "tensor_types": dict(Counter(t.tensor_type.name for t in tensors.values())),
        "chat_template": values.get("tokenizer.chat_template"),
        # Our tokenizers never add BOS themselves; this says whether the model expects one.
        "add_bos_token": values.get("tokenizer.ggml.add_bos_token"),
    }
    return {key: value for key, value in summary.items() if value is not None}
