"""The one tokenizer protocol every model family's tokenizer follows.

Example:
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> isinstance(gpt2_tokenizer(), Tokenizer)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


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

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens included."""
        ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and, for each token, the (start, end) characters of `text` it covers.

        The offsets tile the text (see `tiling_offsets`): ``"".join(text[s:e] for s, e in
        offsets) == text``."""
        ...

    def token_bytes(self) -> list[bytes | None]:
        """The bytes each id stands for in text, by id (for constrained decoding, which matches
        grammars on bytes); None for a special (control) token, which is never part of text."""
        ...


def tiling_offsets(offsets: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Character offsets made to tile a text of `length` characters, one span per token.

    Tokenizers leave gaps (trimmed whitespace) and overlaps (a character whose bytes are split
    over two tokens appears in both). Here each token ends where the furthest end so far is,
    and starts where the previous token ended: a character belongs to the first token holding
    any of its bytes, a token holding only the rest of a split character is empty, and a
    gap belongs to the token after it.

    >>> tiling_offsets([(0, 1), (1, 2), (1, 2), (3, 4)], 5)
    [(0, 1), (1, 2), (2, 2), (2, 5)]
    """
    tiled: list[tuple[int, int]] = []
    end = 0
    for index, (_, token_end) in enumerate(offsets):
        start = end
        end = length if index == len(offsets) - 1 else max(end, min(token_end, length))
        tiled.append((start, end))
    return tiled
