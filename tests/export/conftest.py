"""Fixtures of the export tests (helpers in export_models.py and fake_hub.py)."""

from __future__ import annotations

import threading

import pytest
from export_models import tiny_tokenizer
from fake_hub import FakeHub


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def fake_hub():
    servers = []

    def start(status=200):
        server = FakeHub(status)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
