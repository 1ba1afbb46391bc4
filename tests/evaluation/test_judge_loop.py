"""The loop closed: `sftkit evaluate` judging through `sftkit serve` (the embedded model as the
judge; its scores mean little, the path is real). Slow: it loads a model in a server process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
from judge_fakes import make_entries

from sftkit.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def served_judge():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "sftkit", "serve", "--port", str(port), "--name", "judge",
         "--max-new-tokens", "8", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"sftkit serve exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("sftkit serve did not start within 180 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_evaluate_judges_through_sftkit_serve(served_judge, tmp_path, capsys):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(make_entries(3)))
    status = main(["evaluate", str(path), "--judge", "ollama:judge", "--host", served_judge,
                   "--concurrency", "2", "--timeout", "120", "--retries", "1"])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "responses-judge" / "judge.json").read_text())
    assert summary["total"] == 3 and summary["missing"] == 0
    assert summary["request_errors"] == 0  # every request answered; the replies may not parse
    assert summary["scored"] + summary["unparseable"] == 3
