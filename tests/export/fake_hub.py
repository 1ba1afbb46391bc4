"""A fake Hugging Face Hub on loopback that records what the client sends (test-only)."""

from __future__ import annotations

import json
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
