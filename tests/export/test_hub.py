"""`--push-to-hub` against a fake Hub on loopback that records what the client sends (never
the network): the repository is created, every file of the folder goes in one commit, with the
token; a missing token or a refusal is a clear error."""

from __future__ import annotations

import base64
import json

import pytest

from sftkit.errors import SftkitError
from sftkit.export.hub import push_to_hub

pytest.importorskip("huggingface_hub")


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
