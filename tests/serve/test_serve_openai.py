"""The OpenAI-compatible API through the official `openai` client, against a real server."""

from __future__ import annotations

import openai
import pytest

TINY_NAME = "tiny"  # the --name the server fixture gives
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == [TINY_NAME]
    assert client.models.retrieve(TINY_NAME).id == TINY_NAME


def test_chat_completion_matches_in_process_and_the_ollama_api(client, server, reference):
    import ollama

    done = client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, max_tokens=10,
                                          temperature=0)
    prompt = reference.chat_prompt(MESSAGES[1]["content"], system=MESSAGES[0]["content"])
    assert done.object == "chat.completion" and done.model == TINY_NAME
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content == reference.answer(prompt, 10)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(prompt), 10)
    assert done.usage.total_tokens == len(prompt) + 10

    via_ollama = ollama.Client(host=server.url).chat(model=TINY_NAME, messages=MESSAGES,
                                                     options={"num_predict": 10})
    assert via_ollama.message.content == choice.message.content


def test_streaming_chunks_add_up_and_end_with_usage(client):
    kwargs = {"model": TINY_NAME, "messages": MESSAGES, "max_completion_tokens": 12,
              "temperature": 0.9, "seed": 5}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({chunk.id for chunk in chunks}) == 1


def test_stop_and_text_parts(client):
    kwargs = {"model": TINY_NAME, "max_tokens": 20, "temperature": 1.0, "seed": 11}
    full = client.chat.completions.create(messages=MESSAGES, **kwargs).choices[0].message.content
    stop = full[8:11]
    cut = client.chat.completions.create(messages=MESSAGES, stop=stop, **kwargs).choices[0]
    assert cut.message.content == full[:full.find(stop)] and cut.finish_reason == "stop"
    parts = [MESSAGES[0], {"role": "user", "content": [
        {"type": "text", "text": MESSAGES[1]["content"]}]}]
    same = client.chat.completions.create(messages=parts, **kwargs).choices[0].message.content
    assert same == full


def test_refusals_are_openai_errors(client):
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, n=2)
    with pytest.raises(openai.NotFoundError, match="serves only 'tiny'") as raised:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="temperature must be at most 2"):
        client.chat.completions.create(model=TINY_NAME, messages=MESSAGES, temperature=3)
    with pytest.raises(openai.BadRequestError, match="roles? must be one of|role must be"):
        client.chat.completions.create(model=TINY_NAME, messages=[
            {"role": "tool", "content": "42", "tool_call_id": "x"}])
