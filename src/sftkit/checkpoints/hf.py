"""Hugging Face checkpoints: `config.json` + `model.safetensors` (or shards) in a directory.

`config_from_hf` and `model_from_hf_state_dict` are the one path every HF-named state dict
takes — a Hub download, a local directory, or the tensors a GGUF file holds.

Example:
    >>> config = config_from_hf({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
    ...                          "n_embd": 768, "n_layer": 12, "n_head": 12})
    >>> config.family, config.head_dim
    ('gpt2', 64)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from sftkit.checkpoints.files import read_safetensors, read_tensor_pickle
from sftkit.checkpoints.keymaps import HF_KEYMAPS, convert_from_ours
from sftkit.checkpoints.weights import model_from_state_dict, saved_state_dict
from sftkit.errors import SftkitError
from sftkit.io import atomic_directory
from sftkit.models import Model, ModelConfig
from sftkit.tokenizers import (
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    gpt2_bpe_files,
    gpt2_tokenizer,
)

GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf_config: dict[str, Any], *, name: str = "") -> ModelConfig:
    """Our `ModelConfig` from a HF `config.json` of GPT-2 or a Llama-architecture model.

    Anything our models do not implement (RoPE scaling, biases in the MLP, ...) is an error
    rather than a silently different model.
    """
    model_type = hf_config.get("model_type")
    try:
        if model_type == "gpt2":
            return _gpt2_config(hf_config, name)
        if model_type == "llama":
            return _llama_config(hf_config, name)
    except KeyError as error:
        raise SftkitError(f"{name or 'config.json'}: missing field {error} for a "
                          f"{model_type} model") from None
    raise SftkitError(f"{name or 'config.json'}: model_type {model_type!r} is not supported; "
                      "sftkit loads 'gpt2' and 'llama' architectures")


def _gpt2_config(hf: dict[str, Any], name: str) -> ModelConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise SftkitError(f"{name or 'config.json'}: GPT-2 activation {activation!r} is not "
                          f"supported (only the tanh GELU: {', '.join(GPT2_ACTIVATIONS)})")
    return ModelConfig(
        family="gpt2", vocab_size=hf["vocab_size"], context_length=hf["n_positions"],
        emb_dim=hf["n_embd"], n_layers=hf["n_layer"], n_heads=hf["n_head"],
        hidden_dim=hf.get("n_inner") or 4 * hf["n_embd"], qkv_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), name=name, tokenizer="gpt2",
        prompt_style="alpaca",
    )


def _llama_config(hf: dict[str, Any], name: str) -> ModelConfig:
    where = name or "config.json"
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 nests RoPE settings here
    scaling = hf.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise SftkitError(f"{where}: RoPE scaling {scaling!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise SftkitError(f"{where}: {flag}=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise SftkitError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported")
    heads, emb = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or emb // heads
    if head_dim * heads != emb:
        raise SftkitError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {emb}")
    return ModelConfig(
        family="llama", vocab_size=hf["vocab_size"],
        context_length=hf["max_position_embeddings"], emb_dim=emb,
        n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        hidden_dim=hf["intermediate_size"], qkv_bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), name=name,
        tokenizer="hf", prompt_style="alpaca",
    )


def model_from_hf_state_dict(config: ModelConfig, state_dict: dict[str, torch.Tensor], *,
                             source: str = "Hugging Face state dict",
                             dtype: torch.dtype | str | None = None) -> Model:
    """Our model from HF-named tensors (every tensor shape-checked).

    Example:
        >>> from sftkit.models import build_model
        >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
        >>> hf_names = convert_from_ours(saved_state_dict(build_model(config)), HF_KEYMAPS["gpt2"])
        >>> hf_names["h.0.attn.c_attn.weight"].shape  # fused and transposed, as HF stores it
        torch.Size([32, 96])
        >>> model_from_hf_state_dict(config, hf_names).num_parameters() == config.num_parameters()
        True
    """
    # GPT2LMHeadModel.save_pretrained prefixes names with "transformer."; the Hub's own GPT-2
    # files (saved from GPT2Model) do not. Both are the same layout.
    if config.family == "gpt2":
        state_dict = {key.removeprefix("transformer."): t for key, t in state_dict.items()}
    if config.tie_embeddings and config.family == "llama":
        # Some tied checkpoints store the head anyway; it must equal the embedding.
        state_dict = {key: t for key, t in state_dict.items() if key != "lm_head.weight"}
    return model_from_state_dict(config, state_dict, source=source,
                                 keymap=HF_KEYMAPS[config.family], dtype=dtype)


def read_hf_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a HF checkpoint directory: safetensors (single or sharded) preferred,
    `pytorch_model.bin` read with `weights_only=True` (no code runs)."""
    single = directory / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return _read_shards(index, read_safetensors)
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        return _read_pytorch_bin(bin_file)
    bin_index = directory / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        return _read_shards(bin_index, _read_pytorch_bin)
    raise SftkitError(f"{directory}: no model.safetensors, model.safetensors.index.json or "
                      "pytorch_model.bin in this directory")


def _read_shards(index: Path,
                 read: Callable[[Path], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise SftkitError(f"{index}: not a valid shard index ({error})") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise SftkitError(f"{index}: shard {shard} is missing")
        tensors.update(read(path))
    return tensors


def _read_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    data = read_tensor_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise SftkitError(f"{path}: expected a state dict (names -> tensors)")
    return data


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SftkitError(f"{path}: cannot read ({error})") from None
    except ValueError as error:
        raise SftkitError(f"{path}: not valid JSON ({error})") from None


def hf_tokenizer_from_directory(directory: Path, config: ModelConfig) -> Tokenizer:
    """GPT-2's BPE for GPT-2 models; otherwise the directory's `tokenizer.json`."""
    if config.tokenizer == "gpt2":
        return gpt2_tokenizer()
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise SftkitError(f"{directory}: no tokenizer.json for this {config.family} model")
    return HFTokenizer.from_file(path, name=config.name or directory.name)


def with_preset(config: ModelConfig, preset: ModelConfig, source: str) -> ModelConfig:
    """`preset` (with its provenance and prompt style) once `config` is proven to match it."""
    ours, theirs = preset.architecture(), config.architecture()
    differing = [f"{name}: preset {ours[name]!r}, file {theirs[name]!r}" for name in ours
                 if not _same(ours[name], theirs[name])]
    if differing:
        raise SftkitError(f"{source}: does not match preset {preset.name}: "
                          + "; ".join(differing))
    return preset.replace()  # a copy: the shared preset must never be mutated through a model


def _same(a: Any, b: Any) -> bool:
    # Norm epsilons pass through float32 in some formats (GGUF): 1e-5 comes back 9.99e-6.
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    return a == b


def load_hf_directory(directory: Path, *, dtype: torch.dtype | str | None = None,
                      preset: ModelConfig | None = None) -> tuple[Model, Tokenizer]:
    """Model and tokenizer from a HF-layout directory (a Hub snapshot or a local copy)."""
    config = config_from_hf(read_hf_config(directory), name=str(directory))
    if preset is not None:
        config = with_preset(config, preset, str(directory))
    model = model_from_hf_state_dict(config, read_hf_state_dict(directory),
                                     source=str(directory), dtype=dtype)
    return model, hf_tokenizer_from_directory(directory, config)


def hf_config_of(config: ModelConfig, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """The Hugging Face `config.json` of a model of this shape (GPT2LMHeadModel or
    LlamaForCausalLM): the inverse of `config_from_hf`."""
    eos = tokenizer.eos_id if tokenizer is not None else None
    if config.family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.context_length,
            "n_embd": config.emb_dim, "n_layer": config.n_layers, "n_head": config.n_heads,
            "n_inner": config.hidden_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "bos_token_id": eos, "eos_token_id": eos,
        }
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.context_length,
        "hidden_size": config.emb_dim, "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_id if tokenizer is not None else None,
    }


def save_hf_directory(model: Model, directory: str | Path,
                      tokenizer: Tokenizer | None = None, *,
                      extra_files: Mapping[str, str] | None = None) -> Path:
    """Export `model` as a Hugging Face directory (`config.json` + `model.safetensors`, and the
    tokenizer files: `tokenizer.json`, and GPT-2's `vocab.json` + `merges.txt`), loadable with
    `transformers.AutoModelForCausalLM.from_pretrained`. `extra_files` (name -> text) are
    written with them, in the same atomic step (`sftkit.export.hf_dir` adds the tokenizer's
    config, the generation config and the model card so).

    Example:
        >>> import tempfile
        >>> from sftkit.models import build_model
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4))
        >>> folder = save_hf_directory(model, tempfile.mkdtemp(), gpt2_tokenizer())
        >>> sorted(path.name for path in folder.iterdir())
        ['config.json', 'merges.txt', 'model.safetensors', 'tokenizer.json', 'vocab.json']
        >>> load_hf_directory(folder)[0].config.n_layers
        1
    """
    import shutil

    from safetensors.torch import save_file

    config = model.config
    tensors = convert_from_ours(saved_state_dict(model), HF_KEYMAPS[config.family])
    if config.family == "gpt2":
        # GPT2LMHeadModel's own names; the head is tied to `wte`, so it is not stored.
        tensors = {f"transformer.{name}": t for name, t in tensors.items()}
    with atomic_directory(directory) as staging:
        save_file({name: t.contiguous() for name, t in tensors.items()},
                  staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "config.json").write_text(
            json.dumps(hf_config_of(config, tokenizer), indent=2) + "\n", encoding="utf-8")
        if isinstance(tokenizer, TiktokenTokenizer) and tokenizer.name == "gpt2":
            encoder_json, vocab_bpe = gpt2_bpe_files()
            shutil.copyfile(encoder_json, staging / "vocab.json")
            shutil.copyfile(vocab_bpe, staging / "merges.txt")
            gpt2_tokenizers_backend(encoder_json, vocab_bpe).save(str(staging / "tokenizer.json"))
        elif isinstance(tokenizer, HFTokenizer):
            tokenizer.backend.save(str(staging / "tokenizer.json"))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return Path(directory)


def gpt2_tokenizers_backend(encoder_json: Path, vocab_bpe: Path) -> Any:
    """GPT-2's BPE as a `tokenizers.Tokenizer` (what a Hub `tokenizer.json` of GPT-2 holds):
    byte-level pre-tokenizer and decoder, `<|endoftext|>` special.

    Example:
        >>> backend = gpt2_tokenizers_backend(*gpt2_bpe_files())
        >>> text = "Hello world<|endoftext|>"
        >>> backend.encode(text).ids == gpt2_tokenizer().encode(text)
        True
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors

    backend = Backend(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens(["<|endoftext|>"])
    return backend
