"""The layer contract (import-linter, run by `make test`) must cover every room of the package:
a new top-level module or package outside it would escape the one-way rule unnoticed."""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

import sftkit

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _layered_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    names: set[str] = set()
    for layer in contract["layers"]:
        names.update(name.strip() for name in layer.replace(":", "|").split("|"))
    return names


def test_every_room_is_in_a_layer():
    rooms = {f"sftkit.{module.name}" for module in pkgutil.iter_modules(sftkit.__path__)
             if module.name != "__main__"}
    assert rooms - _layered_modules() == set()
    assert _layered_modules() - rooms == set()
