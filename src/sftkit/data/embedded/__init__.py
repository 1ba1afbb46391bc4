"""The embedded default instruction dataset, shipped inside the package.

`instructions.json` holds about 1,600 short instruction/response pairs in 17 task
families (unit conversion, arithmetic, spelling, synonyms, capitals, ...), written for sftkit
in the spirit of chapter 7 of "Build a Large Language Model (From Scratch)", e.g.
"Convert 45 kilometers to meters." -> "45 kilometers is 45000 meters.". Every record is
`{"instruction", "input", "output", "task"}`; `input` may be empty. Every answer is checked
by a per-family verifier, and the records are ordered so that each family has its share of
the first 85 % (train), the next 10 % (test) and the rest (validation).

The file is generated, never edited by hand. To regenerate it, or to check that the shipped
copy is current:

    python -m sftkit.data.embedded.generator           # rewrite instructions.json
    python -m sftkit.data.embedded.generator --check   # exit 1 if it is out of date

Example:
    >>> records = load_embedded_records()
    >>> sorted(records[0])
    ['input', 'instruction', 'output', 'task']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["EMBEDDED_DATA_FILE", "RECORD_FIELDS", "TASK_FAMILIES", "load_embedded_records"]

TASK_FAMILIES: tuple[str, ...] = (
    "unit_conversion",
    "arithmetic",
    "comparison",
    "parity",
    "spelling",
    "synonym",
    "antonym",
    "plural",
    "past_tense",
    "active_voice",
    "sentiment",
    "extraction",
    "counting",
    "sorting",
    "capital",
    "categorization",
    "odd_one_out",
)

RECORD_FIELDS: tuple[str, ...] = ("instruction", "input", "output", "task")

# The package is installed from a directory (editable or wheel), so the resource is a real
# file on disk and can be handed around as a plain path.
EMBEDDED_DATA_FILE: Path = Path(str(resources.files(__name__).joinpath("instructions.json")))


def load_embedded_records() -> list[dict[str, str]]:
    """Read and validate the shipped dataset (`{"instruction", "input", "output", "task"}`)."""
    from sftkit.data.records import load_records

    return load_records(EMBEDDED_DATA_FILE)
