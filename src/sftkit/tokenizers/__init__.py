"""One tokenizer protocol for every model family: GPT-2, Hugging Face `tokenizer.json`, GGUF.

- `base`: the `Tokenizer` protocol (`encode`, `decode`, `eos_id`, `pad_id`, `vocab_size`);
- `gpt2`: GPT-2's BPE, built offline with tiktoken (ids identical to tiktoken's "gpt2");
- `hf`: `HFTokenizer`, a Hugging Face `tokenizers` object; `HFTokenizer.from_file` reads a
  `tokenizer.json`;
- `gguf`: the tokenizer a GGUF's metadata describes (and the GGUF metadata reader);
- `embedded`: where the embedded default model's GGUF is installed.

This package is at the bottom of the layers: it imports only `sftkit.errors`. To get the
tokenizer of a model (a preset, a path, a Hub id), use
`sftkit.checkpoints.load_pretrained_tokenizer`.

Example:
    >>> tok = load_tokenizer("gpt2")
    >>> tok.encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
    >>> tok.decode([15496, 995])
    'Hello world'
"""

from __future__ import annotations

from collections.abc import Callable

from sftkit.errors import SftkitError
from sftkit.tokenizers.base import Tokenizer
from sftkit.tokenizers.gguf import read_gguf_tokenizer, smollm2_tokenizer
from sftkit.tokenizers.gpt2 import TiktokenTokenizer, gpt2_bpe_files, gpt2_tokenizer
from sftkit.tokenizers.hf import HFTokenizer

TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {"gpt2": gpt2_tokenizer,
                                                   "smollm2": smollm2_tokenizer}


def load_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name (see `TOKENIZERS`); each is built once per process.

    Example:
        >>> load_tokenizer("smollm2").eos_id
        2
    """
    try:
        factory = TOKENIZERS[name]
    except KeyError:
        raise SftkitError(
            f"unknown tokenizer {name!r}; known: {', '.join(sorted(TOKENIZERS))}"
        ) from None
    return factory()


__all__ = ["TOKENIZERS", "HFTokenizer", "TiktokenTokenizer", "Tokenizer", "gpt2_bpe_files",
           "gpt2_tokenizer", "load_tokenizer", "read_gguf_tokenizer", "smollm2_tokenizer"]
