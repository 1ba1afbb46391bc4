"""The server on one continuous batch: a request joins a running generation at the next step,
a short one finishes before a long one, a client that leaves frees its slot at once, the token
cap says "length", and /api/ps shows the load."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

TINY_NAME = "tiny"  # the --name the server fixture gives
LONG = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Talk."}],
        "options": {"num_predict": 900}}
SHORT = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi."}],
         "options": {"num_predict": 3}}


def _timed_lines(url: str, request: dict) -> list[tuple[float, dict]]:
    """A streamed /api/chat: each NDJSON line with the time it arrived."""
    lines = []
    with httpx.stream("POST", url + "/api/chat", json=request, timeout=60) as response:
        for line in response.iter_lines():
            lines.append((time.monotonic(), json.loads(line)))
    return lines


def _ps(url: str) -> dict:
    return httpx.get(url + "/api/ps", timeout=10).json()["models"][0]


@pytest.fixture
def long_and_short(server) -> tuple[list[tuple[float, dict]], list[tuple[float, dict]]]:
    """A long answer streaming, and a short request sent once its first piece has come."""
    first_piece = threading.Event()

    def long() -> list[tuple[float, dict]]:
        lines = []
        with httpx.stream("POST", server.url + "/api/chat", json=LONG, timeout=60) as response:
            for line in response.iter_lines():
                lines.append((time.monotonic(), json.loads(line)))
                first_piece.set()
        return lines

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(long)
        assert first_piece.wait(30)
        short = _timed_lines(server.url, SHORT)
        return running.result(), short


def test_a_request_joins_a_running_batch(long_and_short):
    long, short = long_and_short
    long_done = long[-1][0]
    assert long[-1][1]["eval_count"] == 900
    assert short[0][0] < long_done  # its first token came while the long one was generating


def test_a_short_request_finishes_before_a_long_one(long_and_short):
    long, short = long_and_short
    assert short[-1][1]["done"] and short[-1][1]["eval_count"] == 3
    assert short[-1][0] < long[-1][0]


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_client_that_leaves_frees_its_slot_at_once(server):
    _wait_for(lambda: _ps(server.url)["active_rows"] == 0)
    with httpx.Client(base_url=server.url, timeout=30) as http, \
            http.stream("POST", "/api/chat", json=LONG) as response:
        lines: Iterator[str] = response.iter_lines()
        next(lines)
        assert _ps(server.url)["active_rows"] == 1
        left = time.monotonic()
    _wait_for(lambda: _ps(server.url)["active_rows"] == 0)
    assert time.monotonic() - left < 2  # long before its 900 tokens could have been made


def test_ps_shows_the_model_and_the_load(server):
    entry = _ps(server.url)
    assert entry["name"] == f"{TINY_NAME}:latest" and entry["context_length"] == 1024
    assert entry["slots"] == 16
    assert {"queue_length", "active_rows", "tokens_per_second"} <= entry.keys()
    assert isinstance(entry["tokens_per_second"], float)
    listed = ollama.Client(host=server.url).ps().models[0]  # the official client reads it
    assert listed.model == f"{TINY_NAME}:latest"


def test_each_finished_request_logs_the_load(server):
    seen = len(server.log_text())
    httpx.post(server.url + "/api/chat", json={**SHORT, "stream": False}, timeout=30)
    _wait_for(lambda: "tokens/s" in server.log_text()[seen:])
    assert "queue 0, active 0/16" in server.log_text()[seen:]


def test_a_seeded_sample_is_the_same_alone_and_beside_others(server):
    seeded = {**SHORT, "stream": False,
              "options": {"num_predict": 12, "temperature": 1.0, "seed": 7}}

    def ask(request: dict) -> str:
        return httpx.post(server.url + "/api/chat", json=request,
                          timeout=60).json()["message"]["content"]

    alone = ask(seeded)
    others = [{**seeded, "options": {**seeded["options"], "seed": seed, "num_predict": 20}}
              for seed in range(6)]
    with ThreadPoolExecutor(len(others) + 1) as pool:
        running = [pool.submit(ask, other) for other in others]
        beside = pool.submit(ask, seeded).result()
        assert len({future.result() for future in running}) > 1
    assert beside == alone


@pytest.fixture(scope="module")
def capped(tiny_model_dir, serve_process):
    """The tiny model served with a cap of 5 new tokens and 2 slots."""
    return serve_process(["--model", str(tiny_model_dir), "--name", TINY_NAME,
                          "--max-new-tokens", "5", "--slots", "2"], TINY_NAME)


def test_the_token_cap_ends_an_answer_with_length(capped):
    messages = [{"role": "user", "content": "Talk."}]
    done = ollama.Client(host=capped.url).chat(model=TINY_NAME, messages=messages,
                                               options={"num_predict": 50})
    assert (done.eval_count, done.done_reason) == (5, "length")
    answer = openai.OpenAI(base_url=capped.url + "/v1", api_key="unused").chat.completions \
        .create(model=TINY_NAME, messages=messages, max_tokens=50)
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == (5, "length")
    assert _ps(capped.url)["slots"] == 2
