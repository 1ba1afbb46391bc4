"""Shared fixtures: a tiny character-level tokenizer for literal-tensor tests."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


class CharTokenizer:
    """One id per character: 'a'..'z' → 1..26, ' ' → 27, other characters → 28 + their
    position in `extra`; id 0 is padding, id 99 end-of-text."""

    name = "chars"
    eos_id = 99
    pad_id = 0
    vocab_size = 100
    extra = "#:\n.ABCDEFGHIJKLMNOPQRSTUVWXYZ,!?0123456789"

    def encode(self, text: str) -> list[int]:
        ids = []
        for char in text:
            if "a" <= char <= "z":
                ids.append(ord(char) - ord("a") + 1)
            elif char == " ":
                ids.append(27)
            else:
                ids.append(28 + self.extra.index(char))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for token in ids:
            if 1 <= token <= 26:
                chars.append(chr(ord("a") + token - 1))
            elif token == 27:
                chars.append(" ")
            elif 28 <= token < 28 + len(self.extra):
                chars.append(self.extra[token - 28])
        return "".join(chars)


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()
