"""Tiny models and a tiny byte-level BPE for the GGUF export tests (imported by name, like
`judge_fakes`)."""

from __future__ import annotations

import torch

from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers.gguf import tokenizer_from_gguf_metadata
from sftkit.tokenizers.gpt2 import gpt2_byte_alphabet

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_VOCAB = 288  # embedding rows: the tokenizer's 261 tokens, padded as a trainer would


def tiny_tokenizer():
    """Three control tokens, the 256 byte tokens and two merges: ids fit a tiny embedding."""
    alphabet = sorted(gpt2_byte_alphabet(), key=gpt2_byte_alphabet().get)
    tokens = CONTROL_TOKENS + alphabet + ["he", "Ġt"]
    values = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
              "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["h e", "Ġ t"],
              "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
              "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.bos_token_id": 1,
              "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    return tokenizer_from_gguf_metadata(values, name="tiny")


def tiny_model(family: str, seed: int = 0, **overrides):
    """A random 2-layer model whose rows split into 32-wide quantization blocks."""
    torch.manual_seed(seed)
    shape = {"n_layers": 2, "emb_dim": 64, "n_heads": 4, "vocab_size": TINY_VOCAB,
             "context_length": 128}
    if family == "llama":
        shape |= {"n_kv_heads": 2, "hidden_dim": 128}
    preset = "gpt2" if family == "gpt2" else "smollm2-135m"
    return build_model(ModelConfig.from_name(preset, **(shape | overrides))).eval()

