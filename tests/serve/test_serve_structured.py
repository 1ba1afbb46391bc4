"""Structured output through the server: Ollama's `format` and OpenAI's `response_format` make
even a tiny random model answer JSON that fits the schema; a bad one is a 400."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

TINY_NAME = "tiny"  # the --name the server fixture gives
SCORE = {"type": "object", "required": ["score"],
         "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}}}
PICK = {"type": "object", "required": ["pick", "sure"],
        "properties": {"pick": {"enum": ["red", "green"]}, "sure": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def ollama_client(server):
    return ollama.Client(host=server.url, timeout=60)


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60)


def fits(text: str, schema: dict) -> None:
    value = json.loads(text)
    for key in schema["required"]:
        assert key in value
    if "score" in value:
        assert isinstance(value["score"], int) and 0 <= value["score"] <= 100
    if "pick" in value:
        assert value["pick"] in ("red", "green") and isinstance(value["sure"], bool)


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "seed": 1},
                                     {"temperature": 1.0, "seed": 2}])
def test_ollama_format_schema_greedy_and_sampled(ollama_client, options):
    for schema in (SCORE, PICK):
        reply = ollama_client.chat(model=TINY_NAME, format=schema, options=options,
                                   messages=[{"role": "user", "content": "Rate this."}])
        fits(reply.message.content, schema)
        assert reply.done_reason == "stop"


def test_ollama_format_json_and_streaming(ollama_client):
    pieces = [part.response for part in ollama_client.generate(
        model=TINY_NAME, prompt="Pick one.", format=PICK, stream=True)]
    fits("".join(pieces), PICK)
    started = ollama_client.generate(model=TINY_NAME, prompt="Any JSON.", format="json",
                                     options={"num_predict": 3})
    assert started.response.startswith("{")


def test_openai_response_format(openai_client):
    reply = openai_client.chat.completions.create(
        model=TINY_NAME, messages=[{"role": "user", "content": "Rate this."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "score", "schema": SCORE}})
    fits(reply.choices[0].message.content, SCORE)
    started = openai_client.chat.completions.create(
        model=TINY_NAME, messages=[{"role": "user", "content": "Any JSON."}], max_tokens=3,
        response_format={"type": "json_object"})
    assert started.choices[0].message.content.startswith("{")


@pytest.mark.parametrize(("path", "field", "message"), [
    ("/api/chat", {"format": "yaml"}, 'format must be "json" or a JSON schema object'),
    ("/api/chat", {"format": {"type": "object", "properties": {"a": {"type": "nmbr"}}}},
     "format is not a usable JSON schema: Invalid type: nmbr"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema"}},
     "response_format.json_schema must be an object holding the schema"),
    ("/v1/chat/completions", {"response_format": {"type": "yaml"}}, "response_format must be"),
])
def test_a_bad_format_is_a_400(server, path, field, message):
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}],
            "stream": False, **field}
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]  # Ollama's is the message, OpenAI's holds it
    assert message in (error if isinstance(error, str) else error["message"])
