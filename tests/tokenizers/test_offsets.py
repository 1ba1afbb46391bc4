"""encode_with_offsets: the ids of encode, and offsets tiling the text."""

from __future__ import annotations

import pytest

from sftkit.tokenizers import gpt2_tokenizer, smollm2_tokenizer

SAMPLES = ["", "Hello world", "  leading and trailing spaces  ", "tabs\tand\nnew\n\nlines",
           "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "x<|endoftext|>y",
           "naïve café — “quotes”", "日本語のテキスト", "emoji 🤗🙂 and 𝔘nicode", "1234567 + 89",
           "Ünïcödé\u0301 combining", "a" * 50]


@pytest.mark.parametrize("tokenizer", [gpt2_tokenizer, smollm2_tokenizer])
@pytest.mark.parametrize("text", SAMPLES)
def test_ids_equal_encode_and_offsets_tile_the_text(tokenizer, text):
    tok = tokenizer()
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert len(offsets) == len(ids)
    assert "".join(text[start:end] for start, end in offsets) == text
    assert all(start <= end for start, end in offsets)


@pytest.mark.parametrize("tokenizer", [gpt2_tokenizer, smollm2_tokenizer])
def test_each_token_decodes_inside_its_span(tokenizer):
    tok = tokenizer()
    text = "Hi there, naïve 🤗 world<|im_end|>\n"
    ids, offsets = tok.encode_with_offsets(text)
    for token, (start, end) in zip(ids, offsets):
        piece = tok.decode([token])
        if start < end and "\ufffd" not in piece:
            assert piece == text[start:end]
