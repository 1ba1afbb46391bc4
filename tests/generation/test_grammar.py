"""Structured output: every reply a tiny random model writes under a JSON format parses and fits
its schema, greedy or sampled at temperature 1."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from sftkit.errors import SftkitError
from sftkit.generation.grammar import JsonFormat, ollama_format, openai_response_format
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import gpt2_tokenizer, smollm2_tokenizer

SCORE = {"type": "object", "required": ["score"],
         "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}}}
RECORD = {"type": "object", "required": ["name", "mood"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "mood": {"enum": ["happy", "sad", "neutral"]}}}
NUMBERS = {"type": "array", "maxItems": 4,
           "items": {"type": "integer", "minimum": -50, "maximum": 50}}
SCHEMAS = {"score": SCORE, "record": RECORD, "numbers": NUMBERS}
MAX_NEW_TOKENS = 120


@pytest.fixture(scope="module")
def gpt2_model():
    torch.manual_seed(0)
    # More logits than the tokenizer has ids (as real GPT-2 checkpoints padded to 50,304 do).
    config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2, vocab_size=50304,
                                   context_length=256)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def smollm2_model():
    torch.manual_seed(1)
    config = ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=32, n_heads=2,
                                   n_kv_heads=1, hidden_dim=64, context_length=256)
    return build_model(config).eval()


@torch.inference_mode()
def constrained_reply(model: Any, tokenizer: Any, json_format: JsonFormat, *,
                      temperature: float = 0.0, seed: int = 0) -> str:
    """A plain decode loop over the model's logits with the format's mask applied per token."""
    constraint = json_format.constraint(tokenizer, model.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode("Reply in JSON: ")
    prompt_length = len(ids)
    for _ in range(MAX_NEW_TOKENS):
        logits = model(torch.tensor([ids]))[0, -1].clone()
        constraint.mask(logits)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probs = (logits / temperature).softmax(-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == tokenizer.eos_id:
            break
        constraint.advance(token)
        ids.append(token)
        if constraint.finished():
            break
    else:
        pytest.fail(f"no complete reply in {MAX_NEW_TOKENS} tokens: "
                    f"{tokenizer.decode(ids[prompt_length:])!r}")
    return tokenizer.decode(ids[prompt_length:])


def check_schema(value: Any, schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(value, schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("model_name", ["gpt2_model", "smollm2_model"])
def test_replies_fit_the_schema_greedy_and_sampled(name, model_name, request):
    model = request.getfixturevalue(model_name)
    tokenizer = gpt2_tokenizer() if model_name == "gpt2_model" else smollm2_tokenizer()
    json_format = ollama_format(SCHEMAS[name])
    for temperature, seed in [(0.0, 0), (1.0, 0), (1.0, 1), (1.0, 2), (1.0, 3)]:
        reply = constrained_reply(model, tokenizer, json_format, temperature=temperature,
                                  seed=seed)
        check_schema(json.loads(reply), SCHEMAS[name])


@pytest.mark.parametrize("tokenizer", [gpt2_tokenizer, smollm2_tokenizer])
def test_any_json_object_takes_a_written_reply_to_the_end(tokenizer):
    # A random model's numbers and keys under "json" need not end, so the reply is given.
    tok = tokenizer()
    constraint = ollama_format("json").constraint(tok)
    reply = {"title": "Emma", "year": 1815, "tags": ["novel", {"x": None}], "ok": True}
    for token in tok.encode(json.dumps(reply)):
        assert not constraint.finished()
        logits = torch.zeros(tok.vocab_size)
        constraint.mask(logits)
        assert logits[token] == 0
        constraint.advance(token)
    assert constraint.finished()


def test_the_model_s_extra_ids_and_special_tokens_are_masked(gpt2_model):
    tokenizer = gpt2_tokenizer()
    constraint = ollama_format(SCORE).constraint(tokenizer, gpt2_model.config.vocab_size)
    logits = torch.zeros(gpt2_model.config.vocab_size)
    constraint.mask(logits)
    allowed = (logits == 0).nonzero().flatten().tolist()
    assert allowed and all('{"score": '.startswith(tokenizer.decode([token]))
                           for token in allowed)
    assert (logits[tokenizer.vocab_size:] == float("-inf")).all()


def test_end_of_text_is_allowed_only_when_the_reply_is_complete():
    tokenizer = smollm2_tokenizer()
    constraint = ollama_format({"type": "integer"}).constraint(tokenizer)
    logits = torch.zeros(tokenizer.vocab_size)
    constraint.mask(logits)
    assert logits[tokenizer.eos_id] == float("-inf") and not constraint.accepting()
    for token in tokenizer.encode("12"):
        constraint.advance(token)
    logits = torch.zeros(tokenizer.vocab_size)
    constraint.mask(logits)
    assert logits[tokenizer.eos_id] == 0 and constraint.accepting()
    assert not constraint.finished()  # "123" could still follow


def test_a_refused_token_is_an_error():
    tokenizer = gpt2_tokenizer()
    constraint = ollama_format(SCORE).constraint(tokenizer)
    with pytest.raises(SftkitError, match="not allowed by the output format"):
        constraint.advance(tokenizer.encode("hello")[0])


def test_a_bfloat16_row_is_masked_like_a_float32_one():
    tokenizer = gpt2_tokenizer()
    rows = [torch.zeros(tokenizer.vocab_size, dtype=dtype)
            for dtype in (torch.float32, torch.bfloat16)]
    for row in rows:
        ollama_format(SCORE).constraint(tokenizer).mask(row)
    assert torch.equal(rows[0].isinf(), rows[1].isinf())


@pytest.mark.parametrize("value, message", [
    ("yaml", 'format must be "json" or a JSON schema object'),
    (["json"], 'format must be "json" or a JSON schema object'),
    ({"type": "strin"}, "format is not a usable JSON schema: Invalid type: strin"),
    ({"type": "string", "pattern": "(("}, "format is not a usable JSON schema: regex parse"),
])
def test_ollama_format_errors(value, message):
    with pytest.raises(SftkitError, match=message.replace("(", r"\(")):
        ollama_format(value)


def test_openai_response_formats():
    assert openai_response_format(None) is None
    assert openai_response_format({"type": "text"}) is None
    assert openai_response_format({"type": "json_object"}) == JsonFormat(
        source="response_format")
    schema = openai_response_format({"type": "json_schema", "json_schema": {
        "name": "score", "strict": True, "schema": SCORE}})
    assert schema is not None and schema.schema == SCORE
    with pytest.raises(SftkitError, match="response_format must be"):
        openai_response_format({"type": "xml"})
    with pytest.raises(SftkitError, match="response_format.json_schema.schema is not a usable"):
        openai_response_format({"type": "json_schema", "json_schema": {
            "schema": {"type": "object", "properties": {"a": {"type": 5}}}}})


@pytest.mark.parametrize("tokenizer", [gpt2_tokenizer, smollm2_tokenizer])
def test_token_bytes_spell_the_decoded_text(tokenizer):
    tok = tokenizer()
    table = tok.token_bytes()
    assert len(table) == tok.vocab_size and table[tok.eos_id] is None
    text = "Héllo, 世界! {\"score\": 87}\n\t  🤗"
    ids = tok.encode(text)
    assert b"".join(table[token] for token in ids).decode("utf-8") == text
