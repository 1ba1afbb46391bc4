"""Fixtures of the judge tests: a fake judge server (see judge_fakes.py), a dead address."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from judge_fakes import FakeJudgeServer


@pytest.fixture
def fake_server() -> Iterator[FakeJudgeServer]:
    server = FakeJudgeServer().start()
    yield server
    server.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback address nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
