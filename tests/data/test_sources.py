"""Sources: local files, URLs (served on loopback), the cache and checksums."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import urllib.error

import pytest

from sftkit.data import sources
from sftkit.errors import SftkitError

RECORDS = [{"instruction": "Add 1 and 1.", "input": "", "output": "1 plus 1 is 2."}]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server for a directory holding data.json; yields (url, sha256, hits)."""
    root = tmp_path / "www"
    root.mkdir()
    payload = json.dumps(RECORDS).encode()
    (root / "data.json").write_bytes(payload)
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data.json"
    yield url, hashlib.sha256(payload).hexdigest(), hits
    server.shutdown()


def test_url_is_downloaded_once_and_checked(served):
    url, sha, hits = served
    assert sources.load_source(url, sha256=sha) == RECORDS
    assert sources.load_source(url, sha256=sha) == RECORDS
    assert len(hits) == 1  # the second load used the cache


def test_url_sha_mismatch_is_an_error_and_not_cached(served):
    url, _, hits = served
    with pytest.raises(SftkitError, match="sha256 mismatch"):
        sources.load_source(url, sha256="0" * 64)
    assert not list((sources.cache_dir() / "data").glob("*data.json"))
    assert sources.load_source(url) == RECORDS


def test_changed_cached_file_is_caught(served):
    url, sha, _ = served
    path = sources.resolve_source(url, sha)
    path.write_text(json.dumps(RECORDS * 2))
    with pytest.raises(SftkitError, match="sha256 mismatch"):
        sources.resolve_source(url, sha)


def test_offline_named_source_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(SftkitError) as error:
        sources.load_source("book-ch07")
    assert "raw.githubusercontent.com" in str(error.value)
    assert "pass its local path with --data" in str(error.value)


def test_book_source_checks_its_known_sha(monkeypatch, tmp_path):
    named = sources.NAMED_SOURCES["book-ch07"]
    cached = sources._cached_file_for(named.url)
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps(RECORDS))  # not the book's file
    with pytest.raises(SftkitError, match="sha256 mismatch: expected 7e09a9af"):
        sources.load_source("book-ch07")


def test_local_file_with_sha(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sources.load_source(str(path), sha256=good) == RECORDS
    with pytest.raises(SftkitError, match="sha256 mismatch"):
        sources.load_source(str(path), sha256="f" * 64)


def test_unknown_source():
    with pytest.raises(SftkitError, match="named sources: embedded, book-ch07"):
        sources.load_source("no-such-thing.json")
