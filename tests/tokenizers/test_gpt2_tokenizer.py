"""The GPT-2 tokenizer: ids identical to tiktoken's own "gpt2" construction, offline."""

from __future__ import annotations

import shutil

import pytest

from sftkit.errors import SftkitError
from sftkit.tokenizers import Tokenizer, gpt2_bpe_files, gpt2_tokenizer, load_tokenizer
from sftkit.tokenizers import gpt2 as tokenizer_module

SAMPLE = [
    "Hello world",
    "Convert 45 kilometers to meters.",
    "  leading spaces,\ttabs\tand\n\nnew lines   \n",
    "Numbers: 3.14159, 1,000,000 and 20260125.",
    "Ünïcödé façade — naïve café; 日本語のテキスト; emoji 🚀🔥!",
    "def f(x):\n    return x ** 2  # code\n",
    "don't won't it's I'm you'll we've they're he'd",
    "Text<|endoftext|>more text<|endoftext|>",
    "### Instruction:\nRewrite the sentence.\n\n### Response:\n",
]


@pytest.fixture(scope="module")
def reference_encoding(tmp_path_factory):
    """tiktoken's own gpt2 encoding, built by tiktoken's loader from the same local files."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext import openai_public

    encoder_json, vocab_bpe = gpt2_bpe_files()
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken")))
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
            vocab_bpe_hash=tokenizer_module.GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=tokenizer_module.GPT2_ENCODER_JSON_SHA256)
    finally:
        mp.undo()
    return tiktoken.Encoding(name="gpt2-reference", pat_str=openai_public.r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256},
                             explicit_n_vocab=50257)


def test_protocol_and_specials():
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.eos_id, tok.pad_id, tok.vocab_size) == ("gpt2", 50256, 50256, 50257)
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert tok.encode("<|endoftext|>") == [50256]


@pytest.mark.parametrize("text", SAMPLE)
def test_ids_identical_to_tiktoken(reference_encoding, text):
    ours = gpt2_tokenizer().encode(text)
    assert ours == reference_encoding.encode(text, allowed_special="all")
    assert gpt2_tokenizer().decode(ours) == text


def test_ranks_identical_to_tiktoken(reference_encoding):
    ranks = tokenizer_module.gpt2_mergeable_ranks(*gpt2_bpe_files())
    assert ranks == reference_encoding._mergeable_ranks


def test_corrupt_file_is_refused(tmp_path):
    encoder_json, vocab_bpe = gpt2_bpe_files()
    bad = tmp_path / "vocab.bpe"
    shutil.copy(vocab_bpe, bad)
    with bad.open("a") as file:
        file.write("x y\n")
    with pytest.raises(SftkitError, match="sha256 .* does not match"):
        tokenizer_module.gpt2_mergeable_ranks(encoder_json, bad)


def test_unknown_tokenizer():
    with pytest.raises(SftkitError, match="unknown tokenizer 'bert'"):
        load_tokenizer("bert")
