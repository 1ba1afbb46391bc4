"""Atomic file writes: a temp file in the same directory, then a rename.

A crash or Ctrl-C never leaves a half-written output behind; readers see the old file or the
new one.

Outputs get the permissions a plain `open()` or `mkdir()` would give them (the user's umask),
not the private mode of the temp files they are staged in.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with atomic_directory(out) as staging:
    ...     write_json_atomic(staging / "eval.json", {"exact_match": 0.61})
    >>> print((out / "eval.json").read_text(), end="")
    {
        "exact_match": 0.61
    }
    >>> with atomic_path(out / "notes.txt") as temp:
    ...     _ = temp.write_text("kept")
    >>> sorted(p.name for p in out.iterdir())
    ['eval.json', 'notes.txt']
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.chmod(temp, 0o666 & ~current_umask())
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any, indent: int = 4) -> None:
    """Write `data` as JSON (UTF-8, not ASCII-escaped, trailing newline), atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `directory`; on success it takes its place.

    A directory cannot be renamed over a non-empty one, so an old copy is first moved aside:
    at every moment `directory` is either the complete old one or the complete new one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp",
                                    dir=directory.parent))
    # mkdtemp makes the directory private (0700); give it the mode a plain mkdir() would.
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        yield staging
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old",
                                        dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
