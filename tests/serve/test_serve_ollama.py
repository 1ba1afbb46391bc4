"""The Ollama API through the official `ollama` client, against a real server process."""

from __future__ import annotations

from datetime import datetime

import httpx
import ollama
import pytest

TINY_NAME = "tiny"  # the --name the server fixture gives
TINY_CONTEXT = 1024
USER = [{"role": "user", "content": "Name three colours."}]
COUNTERS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
            "eval_count", "eval_duration")


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_root_version_list_and_show(server, client):
    root = httpx.get(server.url + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert httpx.get(server.url + "/api/version").json()["version"]

    models = client.list().models
    assert [m.model for m in models] == [f"{TINY_NAME}:latest"]
    assert models[0].details.family == "gpt2" and models[0].size > 0

    shown = client.show(TINY_NAME)
    assert shown.capabilities == ["completion"]
    assert shown.details.family == "gpt2" and shown.details.format == "safetensors"
    assert shown.modelinfo["general.architecture"] == "gpt2"
    assert shown.modelinfo["gpt2.context_length"] == TINY_CONTEXT
    assert "{{ .Prompt }}" in shown.template and "### Response:" in shown.template
    assert client.show(f"{TINY_NAME}:latest").template == shown.template
    running = httpx.get(server.url + "/api/ps").json()["models"]
    assert running[0]["name"] == f"{TINY_NAME}:latest"


def test_chat_is_greedy_deterministic_and_matches_in_process(client, reference):
    first = client.chat(model=TINY_NAME, messages=USER, options={"num_predict": 12})
    second = client.chat(model=TINY_NAME, messages=USER, options={"num_predict": 12})
    assert first.message.content == second.message.content
    assert first.message.content == reference.answer(reference.chat_prompt(USER[0]["content"]),
                                                     12)
    assert first.message.role == "assistant" and first.done and first.model == TINY_NAME
    assert first.done_reason == "length" and first.eval_count == 12
    assert first.prompt_eval_count == len(reference.chat_prompt(USER[0]["content"]))
    assert all(isinstance(first[key], int) and first[key] >= 0 for key in COUNTERS)
    assert first.total_duration >= first.eval_duration
    datetime.fromisoformat(first.created_at.replace("Z", "+00:00"))  # RFC 3339


def test_chat_stream_pieces_add_up_to_the_answer(client):
    whole = client.chat(model=TINY_NAME, messages=USER, options={"num_predict": 10})
    chunks = list(client.chat(model=TINY_NAME, messages=USER, options={"num_predict": 10},
                              stream=True))
    assert all(not chunk.done for chunk in chunks[:-1]) and chunks[-1].done
    assert len(chunks) > 2
    assert "".join(chunk.message.content for chunk in chunks) == whole.message.content
    final = chunks[-1]
    assert final.message.content == "" and final.done_reason == "length"
    assert final.eval_count == 10 and all(final[key] is not None for key in COUNTERS)


def test_generate_formats_the_prompt_unless_raw(client, reference):
    prompt = "Write a haiku."
    done = client.generate(model=TINY_NAME, prompt=prompt, options={"num_predict": 8})
    assert done.response == reference.answer(reference.chat_prompt(prompt), 8)
    assert done.done_reason == "length" and done.eval_count == 8
    assert list(done.context)[:done.prompt_eval_count] == reference.chat_prompt(prompt)

    streamed = list(client.generate(model=TINY_NAME, prompt=prompt, options={"num_predict": 8},
                                    stream=True))
    assert "".join(chunk.response for chunk in streamed) == done.response
    assert streamed[-1].done and streamed[-1].eval_count == 8

    raw = client.generate(model=TINY_NAME, prompt=prompt, raw=True, options={"num_predict": 6})
    tokens = reference.loaded.tokenizer.encode(prompt)
    assert raw.prompt_eval_count == len(tokens)
    assert raw.response == reference.answer(tokens, 6)

    with_system = client.generate(model=TINY_NAME, prompt=prompt, system="Be brief.",
                                  template="{{ .System }} | {{ .Prompt }} =>",
                                  options={"num_predict": 4})
    templated = reference.loaded.tokenizer.encode(f"Be brief. | {prompt} =>")
    assert with_system.response == reference.answer(templated, 4)


def test_sampling_with_a_seed_is_reproducible(client, reference):
    options = {"num_predict": 16, "temperature": 1.0, "seed": 42, "top_k": 0, "top_p": 1.0}
    first = client.chat(model=TINY_NAME, messages=USER, options=options)
    again = client.chat(model=TINY_NAME, messages=USER, options=options)
    other = client.chat(model=TINY_NAME, messages=USER, options={**options, "seed": 43})
    assert first.message.content == again.message.content != other.message.content
    expected = reference.answer(reference.chat_prompt(USER[0]["content"]), 16,
                                temperature=1.0, seed=42)
    assert first.message.content == expected


def test_stop_strings_end_the_answer(client):
    options = {"num_predict": 24, "temperature": 1.0, "seed": 7}
    full = client.chat(model=TINY_NAME, messages=USER, options=options).message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = client.chat(model=TINY_NAME, messages=USER, options={**options, "stop": [stop]})
    assert cut.message.content == full[:full.find(stop)]
    assert cut.done_reason == "stop" and cut.eval_count < 24
    streamed = client.chat(model=TINY_NAME, messages=USER, options={**options, "stop": [stop]},
                           stream=True)
    assert "".join(chunk.message.content for chunk in streamed) == cut.message.content


def test_num_ctx_and_the_context_bound_the_answer(client, reference):
    prompt_length = len(reference.chat_prompt(USER[0]["content"]))
    done = client.chat(model=TINY_NAME, messages=USER,
                       options={"num_ctx": prompt_length + 5, "num_predict": -1})
    assert done.eval_count == 5 and done.done_reason == "length"


def test_an_empty_generate_prompt_loads_the_model(client):
    done = client.generate(model=TINY_NAME, prompt="")
    assert done.done and done.done_reason == "load" and done.response == ""
