"""What a GGUF says besides its tensors: the architecture's numbers, the tokenizer, the chat
template and the `general.*` fields, written through a `gguf.GGUFWriter`.

The tokenizer is written the way llama.cpp's converter writes a byte-level BPE: every token in
GPT-2's printable byte alphabet by id, the merges, a type per token (normal, control for the
special tokens, user-defined for added plain ones, unused for padding rows) and the name of the
pre-tokenizer (`tokenizer.ggml.pre`), read back from how the tokenizer splits text.

Example:
    >>> from sftkit.tokenizers import smollm2_tokenizer
    >>> vocab = tokenizer_vocab(smollm2_tokenizer(), vocab_size=49152)
    >>> vocab.tokens[:3], vocab.merges[0], vocab.pre, vocab.types[:3]
    (['<|endoftext|>', '<|im_start|>', '<|im_end|>'], 'Ġ t', 'smollm', [3, 3, 3])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftkit.errors import SftkitError
from sftkit.models.config import ModelConfig
from sftkit.tokenizers import HFTokenizer, TiktokenTokenizer, Tokenizer, gpt2_bpe_files
from sftkit.tokenizers.gguf import (
    PRE_TOKENIZERS,
    SPLITS,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_USER_DEFINED,
)

# The `tokenizer.ggml.pre` names llama.cpp knows, for each split our loader reads.
LLAMA_CPP_PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNUSED = 5


@dataclass
class Vocab:
    """A byte-level BPE as GGUF stores it (`tokenizer.ggml.*`)."""

    tokens: list[str]
    merges: list[str]
    types: list[int]
    pre: str


def tokenizer_vocab(tokenizer: Tokenizer, vocab_size: int) -> Vocab:
    """The GGUF form of `tokenizer`, padded with unused tokens to the model's `vocab_size`
    embedding rows (llama.cpp wants one token per row)."""
    if isinstance(tokenizer, HFTokenizer):
        vocab = _hf_vocab(tokenizer)
    elif isinstance(tokenizer, TiktokenTokenizer) and tokenizer.name == "gpt2":
        vocab = _gpt2_vocab()
    else:
        raise SftkitError(f"GGUF export: tokenizer {tokenizer!r} is not supported (GPT-2's or "
                          "a Hugging Face byte-level BPE)")
    if len(vocab.tokens) > vocab_size:
        raise SftkitError(f"GGUF export: the tokenizer has {len(vocab.tokens)} tokens but the "
                          f"model only {vocab_size} embedding rows")
    padding = range(len(vocab.tokens), vocab_size)
    vocab.tokens += [f"[PAD{index}]" for index in padding]
    vocab.types += [TOKEN_TYPE_UNUSED] * len(padding)
    return vocab


def _hf_vocab(tokenizer: HFTokenizer) -> Vocab:
    spec = json.loads(tokenizer.backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or type(tokenizer.backend.decoder).__name__ != "ByteLevel":
        raise SftkitError(f"GGUF export: {tokenizer.name} is not a byte-level BPE tokenizer")
    by_id = {index: token for token, index in model["vocab"].items()}
    types = dict.fromkeys(by_id, TOKEN_TYPE_NORMAL)
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = TOKEN_TYPE_CONTROL if added["special"] else TOKEN_TYPE_USER_DEFINED
    size = max(by_id) + 1
    missing = sorted(set(range(size)) - set(by_id))
    if missing:
        raise SftkitError(f"GGUF export: {tokenizer.name} has no token for ids {missing[:5]}")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    return Vocab([by_id[i] for i in range(size)], merges, [types[i] for i in range(size)],
                 _pre_tokenizer_name(spec.get("pre_tokenizer"), tokenizer.name))


def _pre_tokenizer_name(pre: dict[str, Any] | None, name: str) -> str:
    """The `tokenizer.ggml.pre` name whose split (`PRE_TOKENIZERS`) this pre-tokenizer makes."""
    pre = pre or {}
    steps: list[dict[str, Any]] = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" \
        else [pre]
    kinds = []
    for step in steps:
        kind = step.get("type")
        if kind == "Digits" and step.get("individual_digits"):
            kinds.append("digits")
        elif kind == "ByteLevel" and step.get("use_regex", True):
            kinds.append("gpt2")
        elif kind == "Split":
            pattern = step.get("pattern", {}).get("Regex")
            known = [split for split, regex in SPLITS.items() if regex == pattern]
            kinds.append(f"split:{known[0] if known else 'unknown pattern'}")
        elif kind != "ByteLevel":  # a ByteLevel without its regex only follows a Split
            kinds.append(str(kind))
    for pre_name in LLAMA_CPP_PRE_NAMES:
        if tuple(kinds) == PRE_TOKENIZERS[pre_name]:
            return pre_name
    raise SftkitError(f"GGUF export: {name}'s pre-tokenizer ({' + '.join(kinds) or 'none'}) "
                      "matches none llama.cpp knows")


def _gpt2_vocab() -> Vocab:
    encoder_json, vocab_bpe = gpt2_bpe_files()
    encoder: dict[str, int] = json.loads(encoder_json.read_text(encoding="utf-8"))
    by_id = {index: token for token, index in encoder.items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    merges = [line for line in vocab_bpe.read_text(encoding="utf-8").split("\n")[1:] if line]
    types = [TOKEN_TYPE_CONTROL if token == "<|endoftext|>" else TOKEN_TYPE_NORMAL
             for token in tokens]
    return Vocab(tokens, merges, types, "gpt-2")


def add_hyperparameters(writer: Any, config: ModelConfig) -> None:
    """The `<arch>.*` numbers llama.cpp builds the graph from."""
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.emb_dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_vocab_size(config.vocab_size)
    if config.family == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)


def add_tokenizer(writer: Any, tokenizer: Tokenizer, vocab_size: int,
                  chat_template: str | None) -> None:
    """The BPE, its special ids and the chat template (`tokenizer.*`).

    Our tokenizers add no BOS or EOS of their own (the prompt styles write every special token),
    so the file says llama.cpp must not either. The end of a turn is the end-of-text id: the
    token generation stops at, in sftkit and in llama.cpp alike.
    """
    vocab = tokenizer_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    special = _special_ids(tokenizer, vocab.tokens)
    writer.add_bos_token_id(special.get("bos_token", tokenizer.eos_id))
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_eot_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    if "unk_token" in special:
        writer.add_unk_token_id(special["unk_token"])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    template = chat_template
    if template is None and isinstance(tokenizer, HFTokenizer) and tokenizer.chat_template:
        template = tokenizer.chat_template.text
    if template is not None:
        writer.add_chat_template(template)


def _special_ids(tokenizer: Tokenizer, tokens: list[str]) -> dict[str, int]:
    """bos/unk ids from the special tokens a chat template names (HF tokenizers only)."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return {}
    index = {token: i for i, token in enumerate(tokens)}
    return {name: index[token] for name, token in template.special_tokens.items()
            if name in ("bos_token", "unk_token") and isinstance(token, str) and token in index}


def add_general(writer: Any, config: ModelConfig, *, name: str, base_model: str, license: str,
                file_type: int) -> None:
    """`general.*`: name, size label, base model, license and the file type."""
    from gguf.utility import size_label

    writer.add_name(name or config.name or config.family)
    writer.add_size_label(size_label(config.num_parameters(), 0, 0, 0))
    if base_model:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_model)
    if license:
        writer.add_license(license)
    writer.add_file_type(file_type)
