"""`--push-to-hub` against a fake Hub on loopback that records what the client sends (never
the network): the repository is created, every file of the folder goes in one commit, with the
token; a missing token or a refusal is a clear error."""

from __future__ import annotations

import base64
import json
import threading
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftkit.errors import SftkitError
from sftkit.export.hub import push_to_hub

pytest.importorskip("huggingface_hub")


class FakeHub(ThreadingHTTPServer):
    """The calls an upload of small files makes: create the repository, check the model
    card's YAML, ask how to upload each file (here: inline, "regular"), commit."""

    def __init__(self, status: int = 200):
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.status = status
        self.requests: list[tuple[str, str, Message, bytes]] = []  # headers: any case

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class FakeHubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(("POST", self.path, self.headers, body))
        if self.server.status != 200:
            return self._reply({"error": "Invalid credentials"}, self.server.status)
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._reply({"url": f"{self.server.url}/{request['organization']}/"
                                       f"{request['name']}"})
        if self.path == "/api/validate-yaml":  # the model card's front matter is checked
            return self._reply({})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                           "shouldIgnore": False} for f in files]})
        oid = "a" * 40
        return self._reply({"commitUrl": f"{self.server.url}/org/tiny/commit/{oid}",
                            "commitOid": oid})

    def _reply(self, data, status=200):
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


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


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    return folder


def committed_files(body: bytes) -> dict[str, bytes]:
    """The files of a commit request (newline-delimited JSON, base64 contents)."""
    files = {}
    for line in body.decode().splitlines():
        entry = json.loads(line)
        if entry["key"] == "file":
            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
    return files


def test_push_creates_the_repo_and_commits_every_file(fake_hub, folder):
    hub = fake_hub()
    url = push_to_hub(folder, "org/tiny", token="hf_test", endpoint=hub.url)
    assert url.endswith("/org/tiny/commit/" + "a" * 40)
    paths = [path for _, path, _, _ in hub.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml",
                     "/api/models/org/tiny/preupload/main", "/api/models/org/tiny/commit/main"]
    assert all(headers["Authorization"] == "Bearer hf_test" for _, _, headers, _ in hub.requests)
    assert json.loads(hub.requests[0][3])["name"] == "tiny"
    assert committed_files(hub.requests[3][3]) == {
        path.name: path.read_bytes() for path in folder.iterdir()}


def test_token_from_the_environment(fake_hub, folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    hub = fake_hub()
    push_to_hub(folder, "org/tiny", endpoint=hub.url)
    assert hub.requests[0][2]["Authorization"] == "Bearer hf_from_env"


def test_no_token_is_a_clear_error(folder, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    with pytest.raises(SftkitError, match="no Hugging Face token; set HF_TOKEN"):
        push_to_hub(folder, "org/tiny", endpoint="http://127.0.0.1:9")


def test_a_refusal_names_the_repo(fake_hub, folder):
    hub = fake_hub(status=401)
    with pytest.raises(SftkitError, match="--push-to-hub org/tiny: .*401"):
        push_to_hub(folder, "org/tiny", token="hf_bad", endpoint=hub.url)
