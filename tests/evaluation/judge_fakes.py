"""Test helpers for the judge: a fake judge server speaking the two APIs the judge uses, on
a free loopback port.

Ollama: `GET /api/tags`, `POST /api/chat`. OpenAI-compatible: `GET /v1/models`,
`POST /v1/chat/completions`. The reply is a function of the prompt; the first `fail_first` chat
requests get a `fail_status` (500), and `delays` holds per-request sleeps (for timeouts and
concurrency). `refuse_format` answers a request asking for structured output (Ollama's `format`,
OpenAI's `response_format`) with a 400, as a server without it does.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeJudgeServer:
    def __init__(self, models: tuple[str, ...] = ("llama3:latest",),
                 reply: Callable[[str], str] = lambda prompt: "85") -> None:
        self.models = list(models)
        self.reply = reply
        self.fail_first = 0
        self.fail_status = 500
        self.refuse_format = False
        self.delays: list[float] = []
        self.chat_bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def chat_count(self) -> int:
        return len(self.chat_bodies)

    def start(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _chat(self, body: dict[str, Any]) -> tuple[int, str | None]:
        """(status, reply text); counts the request and applies failures and delays."""
        with self._lock:
            number = len(self.chat_bodies)
            self.chat_bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
        try:
            if number < len(self.delays):
                time.sleep(self.delays[number])
            if failing:
                return self.fail_status, None
            if self.refuse_format and ("format" in body or "response_format" in body):
                return 400, None
            return 200, self.reply(body["messages"][-1]["content"])
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    self._send(200, {"models": [
                        {"name": name, "model": name, "modified_at": "2024-05-01T00:00:00Z",
                         "size": 1, "digest": "0" * 64, "details": {"format": "gguf"}}
                        for name in fake.models]})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
                        for name in fake.models]})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/api/chat":
                    status, text = fake._chat(body)
                    if status != 200:
                        self._send(status, {"error": "overloaded"})
                        return
                    self._send(200, {"model": body["model"],
                                     "created_at": "2024-05-01T00:00:00Z",
                                     "message": {"role": "assistant", "content": text},
                                     "done": True, "done_reason": "stop"})
                elif self.path == "/v1/chat/completions":
                    status, text = fake._chat(body)
                    if status != 200:
                        self._send(status, {"error": {"message": "overloaded"}})
                        return
                    self._send(200, {
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                  "total_tokens": 2}})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

        return Handler


def make_entries(count: int) -> list[dict[str, Any]]:
    """`count` entries in the book's responses format; entry i's answer names i."""
    return [{"instruction": f"Instruction {i}.", "input": "" if i % 2 else f"input {i}",
             "output": f"Reference answer {i}.", "model_response": f"answer-{i}",
             "task": "even" if i % 2 == 0 else "odd"} for i in range(count)]


def reply_by_entry(replies: dict[int, str], default: str = "50") -> Callable[[str], str]:
    """A reply function keyed by the entry index found in the prompt (`answer-<i>`)."""
    def reply(prompt: str) -> str:
        match = re.search(r"`answer-(\d+)`", prompt)
        return replies.get(int(match.group(1)), default) if match else default

    return reply

