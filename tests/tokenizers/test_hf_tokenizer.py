"""HFTokenizer, and the tokenizer rebuilt from a GGUF's metadata against transformers' own.

transformers builds its GGUF tokenizer for the "smollm" pre-tokenizer with a plain byte-level
split and no digit isolation, while SmolLM2's tokenizer.json (and llama.cpp for "smollm")
isolate every digit first. The two agree except where a whitespace run meets a digit
("a  1", "\\n\\n1"), so the sample compared with transformers as-is avoids that, and every text,
random ones included, is compared with transformers' tokenizer given SmolLM2's pre-tokenizer.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.errors import SftkitError
from sftkit.tokenizers import HFTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")

SAMPLE = [
    "",
    "Hello, world!",
    "Convert 45 kilometers to meters.",
    "Ünïcödé façade — naïve café, Ångström, São Paulo, Kraków, Đà Nẵng",
    "日本語のテキストと中文字符，한국어 텍스트입니다。Россия и Україна; مرحبا",
    "emoji 🚀🔥👍🏽🇺🇸 ❤️ and 🧑‍💻 done",
    "multiple   internal    spaces and\u00a0no-break space",
    "  leading and trailing spaces  ",
    "tabs\tand\ttabs\t\tdouble\t",
    "line one\nline two\n\n\nthree\r\nwindows\r\n",
    "12345678901234567890 and 3.14159265358979, 1,000,000 or 2026-01-25",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }  // loop",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "don't won't it's I'm you'll we've they're he'd DON'T",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n4<|im_end|>\n",
    "<|endoftext|>text<|endoftext|>more",
    "### Instruction:\nRewrite the sentence.\n\n### Input:\nThe cat sat.\n\n### Response:\n",
    "Mixed: Café 日本 🚀 42! x^2 + y_1 = z",
]
# Where a whitespace run meets a digit: SmolLM2 splits the digit off first (see module doc).
WHITESPACE_BEFORE_DIGITS = [
    "a  12345 x",
    "1. First\n\n2. Second\n\n\n3. Third",
    "    42 spaces before",
    "x =\t\t3",
]


@pytest.fixture(scope="module")
def gguf_path():
    from sftkit.tokenizers.embedded import embedded_gguf_path

    try:
        return embedded_gguf_path()
    except SftkitError as error:
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {error}")


@pytest.fixture(scope="module")
def ours(gguf_path) -> HFTokenizer:
    """Ours, read from the GGUF's metadata (`load_tokenizer` caches it)."""
    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' tokenizer built from the same GGUF."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def smollm2_reference(reference):
    """transformers' GGUF tokenizer with the pre-tokenizer SmolLM2's tokenizer.json states."""
    from tokenizers import pre_tokenizers

    backend = tokenizers.Tokenizer.from_str(reference.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return backend


@pytest.mark.parametrize("text", SAMPLE)
def test_ids_equal_transformers_gguf_tokenizer(ours, reference, text):
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("text", SAMPLE + WHITESPACE_BEFORE_DIGITS)
def test_ids_equal_smollm2_pre_tokenizer(ours, smollm2_reference, text):
    assert ours.encode(text) == smollm2_reference.encode(text, add_special_tokens=False).ids


def test_whitespace_run_before_digits_is_kept_whole(ours):
    # SmolLM2 / llama.cpp "smollm": "a", "ĠĠ", digits one by one, "Ġx".
    assert ours.encode("a  12345 x") == [81, 256, 33, 34, 35, 36, 37, 1792]
    assert ours.encode("\n\n1.") == [1116, 33, 30]  # "ĊĊ", "1", "."


# Random text from pieces: unicode characters, the characters tokenisers treat specially, and
# whole special tokens and whitespace runs. SmolLM2's vocabulary lacks 21 of the 256 byte tokens
# (control bytes such as 0x06, and the UTF-8 lead bytes of planes 4-16), which BPE without an
# unknown token drops, so the text avoids control characters and stays below plane 4 for the
# round trip; the ids are compared on everything.
_TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8", max_codepoint=0x3FFFF, exclude_categories=("Cs", "Cc")),
        st.sampled_from(list(" \t\n\r0123456789'.,")),
        st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "  ", "\n\n"]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_random_text_matches_and_round_trips(ours, smollm2_reference, text):
    ids = ours.encode(text)
    assert ids == smollm2_reference.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == text


def test_bytes_missing_from_the_vocabulary_are_dropped_like_transformers(ours, reference):
    text = "a\x06b"
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"] == [81, 82]


def test_special_tokens_are_single_ids_and_decoded(ours):
    assert ours.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]
    # Nothing is skipped on decode, and no BOS/EOS is added on encode.
    assert ours.decode([1, 4093, 2]) == "<|im_start|>user<|im_end|>"
    assert ours.encode("Hi") == [26843]


def test_gguf_tokenizer_ids_and_protocol(ours):
    assert isinstance(ours, Tokenizer)
    assert (ours.eos_id, ours.pad_id, ours.vocab_size) == (2, 2, 49152)
    assert ours.token_to_id("<|endoftext|>") == 0


def test_load_tokenizer_smollm2_is_cached(ours):
    assert ours.name == "smollm2"
    assert load_tokenizer("smollm2") is ours  # the GGUF's metadata is read once per process


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_split_pre_tokenizers_equal_transformers(pre):
    from sftkit.tokenizers.gguf import _pre_tokenizer

    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    from tokenizers import Regex, pre_tokenizers

    expected = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(mapping.GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    ours = _pre_tokenizer({"tokenizer.ggml.pre": pre}, source="test")
    for text in SAMPLE + WHITESPACE_BEFORE_DIGITS:
        assert ours.pre_tokenize_str(text) == expected.pre_tokenize_str(text), text


def test_unknown_pre_tokenizer_is_an_error():
    from sftkit.tokenizers.gguf import _pre_tokenizer

    with pytest.raises(SftkitError, match="m.gguf: pre-tokenizer 'mystery' is not supported"):
        _pre_tokenizer({"tokenizer.ggml.pre": "mystery"}, source="m.gguf")


# --- HFTokenizer.from_file on a tiny tokenizer.json ----------------------------------------

@pytest.fixture
def tiny_json(tmp_path):
    """A byte-level BPE over "a", "b", "ab" with two special tokens, saved as tokenizer.json."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, "<pad>": 1, "a": 2, "b": 3, "ab": 4, "Ġ": 5}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<eos>", special=True),
                                AddedToken("<pad>", special=True)])
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    return path


def test_from_file_reads_tokenizer_config(tiny_json):
    (tiny_json.parent / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<eos>", "pad_token": {"content": "<pad>", "special": True}}))
    tok = HFTokenizer.from_file(tiny_json)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 6)
    assert tok.encode("ab a<eos>") == [4, 5, 2, 0]
    assert tok.decode([4, 5, 2, 0]) == "ab a<eos>"
    assert isinstance(tok, Tokenizer)


def test_from_file_special_tokens_map_and_pad_fallback(tiny_json):
    (tiny_json.parent / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<eos>"}))
    tok = HFTokenizer.from_file(tiny_json)
    assert (tok.eos_id, tok.pad_id) == (0, 0)


def test_from_file_arguments_win(tiny_json):
    (tiny_json.parent / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    tok = HFTokenizer.from_file(tiny_json, eos_token="<pad>", pad_token="<eos>")
    assert (tok.eos_id, tok.pad_id) == (1, 0)


def test_from_file_without_eos_is_an_error(tiny_json):
    with pytest.raises(SftkitError, match=r"tokenizer\.json: no end-of-sequence token"):
        HFTokenizer.from_file(tiny_json)


def test_from_file_unknown_eos_is_an_error(tiny_json):
    with pytest.raises(SftkitError, match=r"tokenizer\.json: eos_token '</s>' is not in the voc"):
        HFTokenizer.from_file(tiny_json, eos_token="</s>")


def test_from_file_bad_json_is_an_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(SftkitError, match="cannot load the tokenizer file"):
        HFTokenizer.from_file(path, eos_token="x")


def test_gguf_tokenizer_survives_save_and_from_file(ours, tmp_path):
    ours.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    reloaded = HFTokenizer.from_file(tmp_path / "tokenizer.json")
    assert reloaded.eos_id == ours.eos_id
    for text in SAMPLE + WHITESPACE_BEFORE_DIGITS:
        assert reloaded.encode(text) == ours.encode(text)
