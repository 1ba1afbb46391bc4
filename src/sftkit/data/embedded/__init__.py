"""The embedded default instruction dataset, shipped inside the package.

`instructions.json` holds 1,870 short chat records in 17 task families (unit conversion,
arithmetic, spelling, synonyms, capitals, ...), written for sftkit in the spirit of chapter 7
of "Build a Large Language Model (From Scratch)". Every record is an OpenAI-messages
conversation with its family, `{"messages": [{"role": "user", ...}, {"role": "assistant",
...}, ...], "task": ...}`. Most are single-turn ("Convert 45 kilometers to meters." -> "45
kilometers is 45000 meters."; a separate input follows the instruction after a blank line, as
the Alpaca prompt puts it); about 15 % are multi-turn, with follow-ups that depend on the turn
before ("And to centimeters?"). Every answer is checked by a per-family verifier, and the
records are ordered so that each family, and its multi-turn part, has its share of the first
85 % (train), the next 10 % (test) and the rest (validation).

The file is generated, never edited by hand. To regenerate it, or to check that the shipped
copy is current:

    python -m sftkit.data.embedded.generator           # rewrite instructions.json
    python -m sftkit.data.embedded.generator --check   # exit 1 if it is out of date

Example:
    >>> records = load_embedded_records()
    >>> len(records), sorted(records[0])
    (1870, ['messages', 'task'])
    >>> [message["role"] for message in records[0]["messages"]]
    ['user', 'assistant']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError

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

RECORD_FIELDS: tuple[str, ...] = ("messages", "task")

# The package is installed from a directory (editable or wheel), so the resource is a real
# file on disk and can be handed around as a plain path.
EMBEDDED_DATA_FILE: Path = Path(str(resources.files(__name__).joinpath("instructions.json")))


def load_embedded_records() -> list[dict[str, Any]]:
    """Read and validate the shipped dataset: OpenAI-messages records, each with its `task`
    (one of TASK_FAMILIES) and nothing else."""
    from sftkit.data.records import load_records

    records = load_records(EMBEDDED_DATA_FILE)
    for index, record in enumerate(records):
        where = f"{EMBEDDED_DATA_FILE}: record {index}"
        if sorted(record) != sorted(RECORD_FIELDS):
            raise SftkitError(f"{where}: expected the fields {list(RECORD_FIELDS)}, got "
                              f"{sorted(record)}")
        if record["task"] not in TASK_FAMILIES:
            raise SftkitError(f"{where}: field 'task': {record['task']!r} is not one of "
                              f"{TASK_FAMILIES}")
    return records
