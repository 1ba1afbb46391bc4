"""Fixtures for conversation tests: the character tokenizer with offsets, and a tiny chat
style whose text the character tokenizer can spell."""

from __future__ import annotations

import pytest

from sftkit.data.prompts import PromptStyle


class TinyChat(PromptStyle):
    """A made-up style: `S:` system, `U:` user, `A:` answer, `#` + newline ends a turn."""

    name = "tiny"
    response_marker = "A:"
    stop_strings = ("#",)
    system_format = "S:{}\n"
    user_format = "U:{}\n"
    generation_prompt = "A:"
    end_of_turn = "#\n"


@pytest.fixture
def chat_tokenizer(char_tokenizer):
    """The character tokenizer with `encode_with_offsets` (one character per token)."""

    class WithOffsets(type(char_tokenizer)):
        def encode_with_offsets(self, text):
            return self.encode(text), [(i, i + 1) for i in range(len(text))]

    return WithOffsets()


@pytest.fixture
def tiny_chat() -> TinyChat:
    return TinyChat()
