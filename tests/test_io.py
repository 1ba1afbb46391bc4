"""Atomic writes: outputs appear whole, with the permissions the user's umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sftkit.io import atomic_directory, atomic_path, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_umask_modes_not_the_temp_ones(tmp_path, umask_022):
    run = tmp_path / "runs" / "x"
    with atomic_directory(run / "model") as staging:
        (staging / "config.json").write_text("{}")
    write_json_atomic(run / "eval.json", {"a": 1})
    assert _mode(run / "model") == 0o755
    assert _mode(run / "model" / "config.json") == 0o644
    assert _mode(run / "eval.json") == 0o644


def test_a_failed_directory_write_keeps_the_old_one(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as staging:
        (staging / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as staging:
        (staging / "weights").write_text("new, half")
        raise RuntimeError("killed")
    assert (out / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_file_write_leaves_no_temp(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
