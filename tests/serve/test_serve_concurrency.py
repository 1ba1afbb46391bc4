"""Many clients at once get complete, uncorrupted answers; clients that leave stop their work."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai

TINY_NAME = "tiny"  # the --name the server fixture gives
CLIENTS = 24
NEW_TOKENS = 12


def _ask(server, index: int, barrier: threading.Barrier) -> str:
    """One client: its own question and seed, through one of four ways of asking."""
    question = f"Question number {index}: what comes after {index}?"
    messages = [{"role": "user", "content": question}]
    barrier.wait()  # everyone at once
    kind = index % 4
    if kind < 2:
        client = ollama.Client(host=server.url, timeout=120)
        options = {"num_predict": NEW_TOKENS, "temperature": 1.0, "seed": index}
        if kind == 0:
            done = client.chat(model=TINY_NAME, messages=messages, options=options)
            assert done.eval_count == NEW_TOKENS
            return done.message.content
        chunks = list(client.chat(model=TINY_NAME, messages=messages, options=options,
                                  stream=True))
        assert chunks[-1].done and chunks[-1].eval_count == NEW_TOKENS
        return "".join(chunk.message.content for chunk in chunks)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120,
                           max_retries=0)
    kwargs = {"model": TINY_NAME, "messages": messages, "max_tokens": NEW_TOKENS,
              "temperature": 1.0, "seed": index}
    if kind == 2:
        done = client.chat.completions.create(**kwargs)
        assert done.usage.completion_tokens == NEW_TOKENS
        return done.choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks)


def test_concurrent_clients_get_their_own_answers(server, reference):
    expected = [reference.answer(reference.chat_prompt(
        f"Question number {index}: what comes after {index}?"), NEW_TOKENS, temperature=1.0,
        seed=index) for index in range(CLIENTS)]
    assert len(set(expected)) == CLIENTS  # distinct answers, so a mix-up would show
    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda index: _ask(server, index, barrier), range(CLIENTS)))
    assert answers == expected


def _wait_for_log(server, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the server log:\n{server.log_text()[-3000:]}")


def test_clients_that_leave_stop_their_generation(server):
    long = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Talk."}],
            "options": {"num_predict": 900}}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/api/chat", json=long) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            # While this generation runs, a non-streamed request queues behind it and gives up.
            try:
                http.post("/api/chat", json={**long, "stream": False}, timeout=0.3)
            except httpx.TimeoutException:
                pass
        # Leaving the `with` closed the streamed response: its client is gone.
    log = _wait_for_log(server, "stopped a generation after")
    stopped_after = int(log.split("stopped a generation after ")[1].split()[0])
    assert stopped_after < 900
    _wait_for_log(server, "skipped a queued request")
    start = time.monotonic()
    quick = httpx.post(server.url + "/api/chat", timeout=30,
                       json={**long, "stream": False, "options": {"num_predict": 3}})
    assert quick.json()["eval_count"] == 3
    assert time.monotonic() - start < 3  # nothing left running from the clients that left
