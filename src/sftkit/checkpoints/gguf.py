"""Read a llama.cpp GGUF file as a Hugging Face Llama checkpoint: config, weights, tokenizer.

A GGUF holds everything a model needs in one file, under llama.cpp's names and layout. We turn
it into what a Hugging Face `LlamaForCausalLM` directory would hold, so one loader
(`sftkit.checkpoints.hf`) serves both sources:

- `hf_config`: the `config.json` fields, from the `llama.*` metadata;
- `state_dict`: HF tensor names, float32, HF shapes (every quantization type the `gguf` package
  can dequantize), with the rotary permutation llama.cpp applies to q/k undone;
- `tokenizer`: the byte-level BPE from `tokenizer.ggml.*`, rebuilt with HF `tokenizers`.

Example:
    >>> checkpoint = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> checkpoint.hf_config["num_key_value_heads"], checkpoint.metadata["quantization"]
    (3, 'MOSTLY_Q4_1')
    >>> checkpoint.state_dict["model.layers.0.self_attn.k_proj.weight"].shape
    torch.Size([192, 576])
    >>> checkpoint.tokenizer.encode("<|im_start|>user")
    [1, 4093]
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftkit.errors import SftkitError
from sftkit.tokenizer import HFTokenizer

# GGUF tensor name -> HF `LlamaForCausalLM` name; `{}` is the layer index. Declarative and
# invertible (see `HF_TO_GGUF`), looked up through `gguf_to_hf_key`, which raises on anything
# unknown instead of silently dropping a tensor.
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

SUPPORTED_ARCHITECTURES = ("llama",)

# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Llama 3's pattern; Qwen2's differs only in splitting numbers into single digits.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# `tokenizer.ggml.pre` -> how text is cut before BPE. Each entry reproduces the split llama.cpp
# applies for that name (llama-vocab.cpp), which is what the original tokenizer.json does.
# "smollm" (like StarCoder) first isolates every digit, then applies the GPT-2 pattern; a
# plain byte-level pre-tokenizer would tokenise "  12" or "\n\n1" differently from SmolLM2.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": ("gpt2",),
    "gpt2": ("gpt2",),
    "smollm": ("digits", "gpt2"),
    "starcoder": ("digits", "gpt2"),
    "refact": ("digits", "gpt2"),
    "codeshell": ("digits", "gpt2"),
    "llama-bpe": ("split:llama3",),
    "llama3": ("split:llama3",),
    "qwen2": ("split:qwen2",),
}
_SPLITS = {"llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


@dataclass
class GGUFCheckpoint:
    """What a GGUF file holds, in Hugging Face terms (see the module docstring)."""

    path: Path
    hf_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer: HFTokenizer
    metadata: dict[str, Any] = field(default_factory=dict)


def _mapped_key(key: str, table: Mapping[str, str], source: str) -> str:
    """`key` through `table`, with the layer number taken out as `{}` and put back."""
    layer = re.search(r"\.(\d+)\.", key)
    abstract = key if layer is None else key.replace(f".{layer.group(1)}.", ".{}.", 1)
    try:
        mapped = table[abstract]
    except KeyError:
        raise SftkitError(f"{source}: unknown tensor {key!r}; known: "
                          f"{', '.join(sorted(table))}") from None
    return mapped if layer is None else mapped.format(layer.group(1))


def gguf_to_hf_key(name: str, source: str = "GGUF") -> str:
    """The HF name of a GGUF tensor; unknown names raise.

    Example:
        >>> gguf_to_hf_key("blk.3.ffn_gate.weight")
        'model.layers.3.mlp.gate_proj.weight'
    """
    return _mapped_key(name, GGUF_TO_HF, source)


def hf_to_gguf_key(name: str, source: str = "HF state dict") -> str:
    """The GGUF name of an HF tensor; unknown names raise.

    Example:
        >>> hf_to_gguf_key("model.layers.3.self_attn.q_proj.weight")
        'blk.3.attn_q.weight'
    """
    return _mapped_key(name, HF_TO_GGUF, source)


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a Llama-architecture GGUF file: HF config, float32 HF state dict, tokenizer.

    Every tensor is dequantized to float32 (a 135M model takes about 0.55 GB) and checked
    against the shape the config implies.

    Example:
        >>> checkpoint = read_gguf(embedded_gguf_path())
        >>> checkpoint.hf_config["model_type"], len(checkpoint.state_dict)
        ('llama', 272)
    """
    path = Path(path)
    reader = _open_reader(path)
    values = _metadata_values(reader, path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    hf_config = _hf_config(values, tensors, path)
    state_dict = _state_dict(tensors, hf_config, path)
    return GGUFCheckpoint(
        path=path,
        hf_config=hf_config,
        state_dict=state_dict,
        tokenizer=tokenizer_from_gguf_metadata(values, source=str(path), name=path.stem),
        metadata=_summary(values, tensors),
    )


def read_gguf_tokenizer(path: str | Path, name: str | None = None) -> HFTokenizer:
    """Only the tokenizer of a GGUF file (no tensor is dequantized).

    Example:
        >>> tok = read_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> tok.decode(tok.encode("Hello, world!"))
        'Hello, world!'
    """
    path = Path(path)
    values = _metadata_values(_open_reader(path), path)
    return tokenizer_from_gguf_metadata(values, source=str(path), name=name or path.stem)


def _open_reader(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise SftkitError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as error:
        # GGUFReader raises ValueError on a bad magic number and IndexError/KeyError when a
        # truncated or foreign file runs out of bytes or holds an impossible type code.
        raise SftkitError(f"{path} is not a readable GGUF file: {error}") from error


def _metadata_values(reader, path: Path) -> dict[str, Any]:
    """Every metadata field as a Python value (strings, numbers, lists)."""
    values = {}
    for key, reader_field in reader.fields.items():
        try:
            values[key] = reader_field.contents()
        except (ValueError, UnicodeDecodeError) as error:
            raise SftkitError(f"{path}: cannot decode metadata field {key!r}: {error}") from error
    return values


def _float32_as_written(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal
    that rounds to the same float32 is what the converter was given, and what config.json says."""
    return float(str(np.float32(value)))


def _required(values: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in values:
        raise SftkitError(f"{path}: metadata field {key!r} is missing")
    return values[key]


def _hf_config(values: Mapping[str, Any], tensors: Mapping[str, Any], path: Path) -> dict:
    """The `config.json` of the equivalent HF `LlamaForCausalLM`, from `llama.*` metadata."""
    architecture = _required(values, "general.architecture", path)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise SftkitError(f"{path}: architecture {architecture!r} is not supported; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def required(key: str) -> Any:
        return _required(values, f"{architecture}.{key}", path)

    def optional(key: str, default: Any) -> Any:
        return values.get(f"{architecture}.{key}", default)

    hidden_size = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(optional("attention.head_count_kv", num_heads))
    head_dim = int(optional("attention.key_length",
                            optional("rope.dimension_count", hidden_size // num_heads)))
    if "token_embd.weight" not in tensors:
        raise SftkitError(f"{path}: tensor 'token_embd.weight' is missing")
    # The embedding's row count is the truth; the metadata field is optional in older files.
    vocab_size = int(tensors["token_embd.weight"].shape[-1])
    config = {
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
        "rope_scaling": _rope_scaling(values, architecture, path),
        "max_position_embeddings": int(required("context_length")),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    for name in ("bos", "eos", "padding"):
        token_id = values.get(f"tokenizer.ggml.{name}_token_id")
        config_key = "pad_token_id" if name == "padding" else f"{name}_token_id"
        config[config_key] = None if token_id is None else int(token_id)
    return config


def _rope_scaling(values: Mapping[str, Any], architecture: str, path: Path) -> dict | None:
    kind = values.get(f"{architecture}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        factor = _float32_as_written(values[f"{architecture}.rope.scaling.factor"])
        return {"rope_type": "linear", "factor": factor}
    raise SftkitError(f"{path}: RoPE scaling {kind!r} is not supported (only linear)")


def _expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The HF shape of every tensor the config implies (lm_head only when untied)."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_rows, hidden),
        "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden),
        "self_attn.o_proj.weight": (hidden, q_rows),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (inner, hidden),
        "mlp.up_proj.weight": (inner, hidden),
        "mlp.down_proj.weight": (hidden, inner),
    }
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden),
              "model.norm.weight": (hidden,)}
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()})
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    return shapes


def _state_dict(tensors: Mapping[str, Any], config: Mapping[str, Any],
                path: Path) -> dict[str, torch.Tensor]:
    expected = _expected_shapes(config)
    state_dict: dict[str, torch.Tensor] = {}
    for gguf_name, tensor in tensors.items():
        hf_name = gguf_to_hf_key(gguf_name, source=str(path))
        if hf_name not in expected:
            raise SftkitError(f"{path}: tensor {gguf_name!r} ({hf_name}) does not belong to a "
                              f"{config['num_hidden_layers']}-layer model")
        weight = _dequantized(tensor, path)
        if weight.shape != expected[hf_name]:
            raise SftkitError(f"{path}: tensor {gguf_name!r} ({hf_name}) has shape "
                              f"{tuple(weight.shape)}, expected {expected[hf_name]}")
        if hf_name.endswith("self_attn.q_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_attention_heads"])
        elif hf_name.endswith("self_attn.k_proj.weight"):
            weight = unpermute_rope_rows(weight, config["num_key_value_heads"])
        state_dict[hf_name] = torch.from_numpy(weight)
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise SftkitError(f"{path}: missing tensors {', '.join(missing)}")
    return state_dict


def _dequantized(tensor, path: Path) -> np.ndarray:
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


def tokenizer_from_gguf_metadata(values: Mapping[str, Any], source: str = "GGUF",
                                 name: str = "gguf") -> HFTokenizer:
    """The byte-level BPE a GGUF describes (`tokenizer.ggml.model == "gpt2"`), as HF `tokenizers`.

    Control tokens (`<|im_start|>`, `<|endoftext|>`, ...) become special added tokens, so they
    are matched whole in the text; user-defined ones become plain added tokens. pad is the
    file's padding id, else eos.

    Example:
        >>> reader = gguf.GGUFReader("SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> values = {key: field.contents() for key, field in reader.fields.items()}
        >>> tok = tokenizer_from_gguf_metadata(values, name="smollm2")
        >>> tok.eos_id, tok.pad_id
        (2, 2)
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    model = values.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise SftkitError(f"{source}: tokenizer model {model!r} is not supported (only the "
                          "byte-level BPE 'gpt2')")
    tokens: list[str] = list(_required(values, "tokenizer.ggml.tokens", Path(source)))
    merges = [tuple(merge.split(" ", 1)) for merge in values.get("tokenizer.ggml.merges", [])]
    token_types = list(values.get("tokenizer.ggml.token_type") or [])
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                   byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(values, source)
    backend.decoder = decoders.ByteLevel()
    by_type = {kind: [token for token, t in zip(tokens, token_types) if t == kind]
               for kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)}
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token in by_type[TOKEN_TYPE_CONTROL]])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token in by_type[TOKEN_TYPE_USER_DEFINED]])
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise SftkitError(f"{source}: the tokenizer has {len(tokens)} tokens but "
                          f"{backend.get_vocab_size(with_added_tokens=True)} distinct ones")
    eos_id = values.get("tokenizer.ggml.eos_token_id")
    if eos_id is None:
        raise SftkitError(f"{source}: metadata field 'tokenizer.ggml.eos_token_id' is missing")
    return HFTokenizer(backend, name=name, eos_id=int(eos_id),
                       pad_id=_optional_int(values.get("tokenizer.ggml.padding_token_id")),
                       vocab_size=len(tokens))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _pre_tokenizer(values: Mapping[str, Any], source: str):
    from tokenizers import Regex, pre_tokenizers

    pre = values.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise SftkitError(f"{source}: pre-tokenizer {pre!r} is not supported; supported: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))}")
    add_prefix_space = bool(values.get("tokenizer.ggml.add_space_prefix", False))
    steps = []
    for step in PRE_TOKENIZERS[pre]:
        if step == "digits":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        elif step == "gpt2":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space,
                                                  use_regex=True))
        else:
            pattern = _SPLITS[step.removeprefix("split:")]
            steps += [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space,
                                               use_regex=False)]
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
