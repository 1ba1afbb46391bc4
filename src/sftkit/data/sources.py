"""Where instruction records come from: a file, a URL, or a named source.

Named sources:
  - `embedded`: sftkit's own default dataset, shipped inside the package (offline).
  - `book-ch07`: the book's `instruction-data.json` (1,100 entries), downloaded once into the
    cache and checked against its sha256.

URLs are downloaded once into the cache (`$SFTKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/sftkit`,
else `~/.cache/sftkit`); an expected sha256 may be given and is then checked on every use.

Example:
    >>> records = load_source("embedded")
    >>> sorted(records[0])
    ['messages', 'task']
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.data.records import load_records
from sftkit.errors import SftkitError
from sftkit.io import atomic_path


@dataclass(frozen=True)
class RemoteSource:
    url: str
    sha256: str | None = None


NAMED_SOURCES: dict[str, RemoteSource] = {
    "book-ch07": RemoteSource(
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/"
        "01_main-chapter-code/instruction-data.json",
        sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    ),
}
EMBEDDED = "embedded"
DOWNLOAD_TIMEOUT_SECONDS = 60


def cache_dir() -> Path:
    """sftkit's download cache."""
    if os.environ.get("SFTKIT_CACHE_DIR"):
        return Path(os.environ["SFTKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sftkit"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_file_for(url: str) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    url_key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "data" / f"{url_key}-{name}"


def fetch_url(url: str, sha256: str | None = None) -> Path:
    """The cached copy of `url`, downloaded once (atomically) and checked against `sha256`."""
    target = _cached_file_for(url)
    if not target.exists():
        try:
            with atomic_path(target) as temp:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
                    temp.write_bytes(response.read())
                _check_sha256(temp, sha256, url)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SftkitError(
                f"cannot download {url}: {reason}. If you are offline, download the file "
                "elsewhere and pass its local path with --data"
            ) from None
    _check_sha256(target, sha256, url)
    return target


def _check_sha256(path: Path, expected: str | None, origin: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise SftkitError(
            f"{origin}: sha256 mismatch: expected {expected}, got {actual} ({path}). "
            "The file changed upstream or the download is corrupt; delete the cached copy "
            "to download again, or pass a file you trust with --data"
        )


def resolve_source(spec: str, sha256: str | None = None) -> Path:
    """A local path for a source spec: a named source, an http(s) URL or a file path."""
    if spec == EMBEDDED:
        from sftkit.data.embedded import EMBEDDED_DATA_FILE

        return Path(EMBEDDED_DATA_FILE)
    if spec in NAMED_SOURCES:
        named = NAMED_SOURCES[spec]
        return fetch_url(named.url, sha256 or named.sha256)
    if spec.startswith(("http://", "https://")):
        return fetch_url(spec, sha256)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join([EMBEDDED, *NAMED_SOURCES])
        raise SftkitError(f"{spec}: no such file (named sources: {known}; or an http(s) URL)")
    _check_sha256(path, sha256, str(path))
    return path


def load_source(
    spec: str, fields: Mapping[str, str] | None = None, sha256: str | None = None
) -> list[dict[str, Any]]:
    """Resolve a source spec and load its validated records."""
    return load_records(resolve_source(spec, sha256), fields)
