"""Malformed and refused requests: the right status and `{"error": ...}`, and the server keeps
serving."""

from __future__ import annotations

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
])
def test_bad_option_values_through_the_client(server, options, message):
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model=TINY_NAME, messages=CHAT["messages"], options=options)
    assert raised.value.status_code == 400 and message in raised.value.error


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
