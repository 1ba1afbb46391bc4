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
