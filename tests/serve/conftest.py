"""One real `sftkit serve` process for the whole directory: a tiny random GPT-2 in sftkit's
format on a free loopback port, plus the same model loaded here to compute expected answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from sftkit.checkpoints import LoadedModel, load_pretrained
from sftkit.checkpoints.native import save_native
from sftkit.data.prompts import PromptStyle, get_style
from sftkit.generation import GenerationConfig, generate
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import gpt2_tokenizer

TINY_NAME = "tiny"
TINY_CONTEXT = 1024  # long enough for a generation that lasts seconds (the disconnect test)


@dataclass
class Server:
    url: str
    name: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: Sequence[str], name: str, log: Path, timeout: float = 120.0) -> Server:
    """Start `python -m sftkit serve ARGS` and wait until it answers `GET /`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "sftkit", "serve", *args,
                                    "--port", str(port), "--device", "cpu"],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n"
                               f"{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1).text == "Ollama is running":
                return Server(url, name, log, process)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not answer within {timeout} s:\n"
                       f"{log.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              context_length=TINY_CONTEXT))
    return save_native(model, gpt2_tokenizer(), tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def serve_process(tmp_path_factory) -> Iterator[Callable[[Sequence[str], str], Server]]:
    """Starts `sftkit serve ARGS` answering as NAME; whatever is still running at the end of
    the session is stopped."""
    started: list[Server] = []

    def start(args: Sequence[str], name: str) -> Server:
        log = tmp_path_factory.mktemp("serve-log") / "server.log"
        started.append(start_server(args, name, log))
        return started[-1]

    yield start
    for running in started:
        if running.process.poll() is None:
            running.stop()


@pytest.fixture(scope="session")
def server(tiny_model_dir, serve_process) -> Server:
    """The tiny model, served once for the whole directory."""
    return serve_process(["--model", str(tiny_model_dir), "--name", TINY_NAME], TINY_NAME)


@dataclass
class Reference:
    """The served model, loaded in the test process: what the server should answer."""

    loaded: LoadedModel
    style: PromptStyle

    def chat_prompt(self, content: str, system: str | None = None) -> list[int]:
        messages = [{"role": "system", "content": system}] if system else []
        text = self.style.format_conversation([*messages, {"role": "user", "content": content}])
        return self.loaded.tokenizer.encode(text)

    def answer(self, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
               seed: int | None = None, stop: Sequence[str] = ()) -> str:
        tokenizer = self.loaded.tokenizer
        stops = (*self.style.stop_strings, *stop)
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                  seed=seed, stop_ids=(tokenizer.eos_id,), stop_strings=stops)
        ids = generate(self.loaded.model, [prompt_ids], config, decode=tokenizer.decode)[0]
        text = tokenizer.decode(ids)
        cuts = [text.find(s) for s in stops if s in text]
        return text[:min(cuts)] if cuts else text


@pytest.fixture(scope="session")
def reference(tiny_model_dir) -> Reference:
    loaded = load_pretrained(str(tiny_model_dir))
    return Reference(loaded, get_style(loaded.config.prompt_style))

