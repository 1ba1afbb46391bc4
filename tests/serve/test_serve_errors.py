"""Malformed and refused requests: the right status and `{"error": ...}`, and the server keeps
serving."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

TINY_NAME = "tiny"  # the --name the server fixture gives
CHAT = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
        "options": {"num_predict": 2}}


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=30, **kwargs)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"messages": [{"role": "user", "content": "Hi"}]}', 400, "model is required"),
    (b'{"model": "llama3", "messages": [{"role": "user", "content": "Hi"}]}', 404,
     "model 'llama3' not found: this server serves only 'tiny'"),
    (b'{"model": "tiny"}', 400, "messages must be a non-empty list"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', 400,
     "messages[0].content must be a string"),
    (b'{"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}', 400,
     "expected a user message"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": 3}', 400,
     "options must be an object"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "no"}', 400,
     "stream must be true or false"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
     "messages[0].content holds a lone UTF-16 surrogate"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x", "\\udc00": 1}]}', 400,
     "messages[0] has a key that holds a lone UTF-16 surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "nested too deeply"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": []}', 400,
     "options must be an object, got []"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": ""}', 400,
     "options must be an object"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400,
     "model must be a string, got 5"),
    (b'{"model": "tiny", "messages": {"role": "user", "content": "x"}}', 400,
     "messages must be a non-empty list"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": 1}', 400,
     "stream must be true or false"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": "all"}', 400,
     "tools must be a list"),
])
def test_malformed_chat_requests(server, body, status, message):
    response = post(server, "/api/chat", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize(("options", "message"), [
    ({"temperature": "hot"}, "options.temperature must be a number"),
    ({"temperature": -1}, "options.temperature must be at least 0"),
    ({"num_predict": 2.5}, "options.num_predict must be an integer"),
    ({"num_predict": True}, "options.num_predict must be an integer"),
    ({"top_k": -3}, "options.top_k must be at least 0"),
    ({"top_p": 1.5}, "options.top_p must be at most 1"),
    ({"seed": "x"}, "options.seed must be an integer"),
    ({"stop": [1, 2]}, "options.stop must be a string or a list of strings"),
    ({"num_ctx": 0}, "options.num_ctx must be at least 1"),
    ({"num_predict": "many"}, "options.num_predict must be an integer"),
])
def test_bad_option_values_through_the_client(server, options, message):
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model=TINY_NAME, messages=CHAT["messages"], options=options)
    assert raised.value.status_code == 400 and message in raised.value.error


def post_json(server, path: str, body: object) -> httpx.Response:
    """`body` as Python's json writes it: non-ASCII escaped (lone surrogates too), and
    Infinity / NaN allowed, as a careless client may send them."""
    return post(server, path, content=json.dumps(body))


@pytest.mark.parametrize(("options", "message"), [
    ({"temperature": float("inf")}, "options.temperature must be a finite number"),
    ({"top_p": float("nan")}, "options.top_p must be a finite number"),
    ({"stop": "\ud800"}, "options.stop holds a lone UTF-16 surrogate"),
    ({"seed": 10**300}, "options.seed must be below 2**63, got 1000"),
])
def test_option_values_no_client_sends(server, options, message):
    response = post_json(server, "/api/chat", {**CHAT, "options": options})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error and len(error) < 200  # a long value is shortened, not echoed


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "tiny", "prompt": "\udc00"}, "prompt holds a lone UTF-16 surrogate"),
    ({"model": "tiny", "prompt": "Hi", "context": [-5]}, "context[0] must be a token id"),
    ({"model": "tiny", "prompt": "Hi", "context": [50257]}, "context[0] must be a token id"),
    ({"model": "tiny", "prompt": "Hi", "context": [1, True]}, "context[1] must be a token id"),
    ({"model": "tiny", "prompt": "Hi", "context": {}}, "context must be a list of token ids"),
    ({"model": "tiny", "prompt": 3}, "prompt must be a string"),
    ({"model": "tiny", "prompt": "Hi", "raw": "yes"}, "raw must be true or false"),
    ({"model": "tiny", "prompt": "Hi", "system": ["x"]}, "system must be a string"),
    ({"model": "tiny", "prompt": "Hi", "images": "cat.png"}, "images must be a list"),
])
def test_malformed_generate_requests(server, body, message):
    for stream in (False, True):  # refused before the stream starts
        response = post_json(server, "/api/generate", {**body, "stream": stream,
                                                       "options": {"num_predict": 2}})
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]


OPENAI_CHAT = b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2'


@pytest.mark.parametrize(("body", "message"), [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages[0].content holds a lone UTF-16 surrogate"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", '
     b'"text": "\\ud800 "}]}]}', "messages[0].content[0].text holds a lone UTF-16 surrogate"),
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    (OPENAI_CHAT + b', "stream": true, "stream_options": [1]}',
     "stream_options must be an object"),
    (OPENAI_CHAT + b', "stream": true, "stream_options": {"include_usage": "yes"}}',
     "stream_options.include_usage must be true or false"),
    (OPENAI_CHAT + b', "temperature": Infinity}', "temperature must be a finite number"),
    (OPENAI_CHAT + b', "stream": "true"}', "stream must be true or false"),
    (OPENAI_CHAT + b', "max_tokens": -1}', "max_tokens must be at least 0"),
    (OPENAI_CHAT + b', "tools": {}}', "tools must be a list"),
])
def test_malformed_openai_requests_are_invalid_request_errors(server, body, message):
    response = post(server, "/v1/chat/completions", content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_a_wrong_method_is_a_client_error_in_each_api(server):
    response = httpx.get(server.url + "/v1/chat/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "GET /v1/chat/completions" in response.json()["error"]["message"]
    response = httpx.post(server.url + "/v1/models")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(server.url + "/api/tags")
    assert response.status_code == 405 and "POST /api/tags" in response.json()["error"]
    missing = httpx.get(server.url + "/v1")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_through_the_clients(server):
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).generate(model="llama3", prompt="Hi")
    assert raised.value.status_code == 404 and "'tiny'" in raised.value.error
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).show("llama3")
    assert raised.value.status_code == 404


def test_an_oversized_body_is_refused(server):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = post(server, "/api/chat", json=big)
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    response = post(server, "/v1/chat/completions", json=big)
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]


def test_a_prompt_longer_than_the_context_is_refused(server):
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 1100}]}
    response = post(server, "/api/chat", json=long)
    assert response.status_code == 400
    assert "the context holds 1024" in response.json()["error"]


def test_unsupported_features_and_unknown_routes(server):
    for extra, message in (({"tools": [{"type": "function"}]}, "does not support tools"),
                           ({"think": True}, "does not support thinking")):
        response = post(server, "/api/chat", json={**CHAT, **extra})
        assert response.status_code == 400 and message in response.json()["error"]
    missing = httpx.get(server.url + "/api/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(server.url + "/api/chat")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    openai_missing = httpx.get(server.url + "/v1/nothing")
    assert openai_missing.status_code == 404 and openai_missing.json()["error"]["message"]


def test_the_server_still_serves_after_errors(server):
    response = post(server, "/api/chat", json=CHAT)
    assert response.status_code == 200 and response.json()["done"] is True
