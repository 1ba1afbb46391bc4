"""Load and validate instruction records from JSON or JSONL files.

A file holds records of one format (see `sftkit.data.formats`). An Alpaca record is a plain
dict with string fields `instruction`, `input` (missing → "") and `output`; any other fields
(for example the embedded data's `task`) are kept as they are. Records of the conversation
formats (OpenAI `messages`, ShareGPT `conversations`, `prompt`/`completion`) are checked and
kept in their own shape.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "data.json"
    >>> _ = path.write_text(json.dumps([{"instruction": "Convert 45 kilometers to meters.",
    ...                                  "completion": "45 kilometers is 45000 meters."}]))
    >>> records = load_records(path, fields={"output": "completion"})
    >>> records[0]["output"], records[0]["input"]
    ('45 kilometers is 45000 meters.', '')
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.data.formats import (
    ALPACA,
    KNOWN_SHAPES,
    chat_problems,
    detect_format,
    formats_of,
    record_format,
    record_messages,
)
from sftkit.errors import SftkitError

REQUIRED_FIELDS = ("instruction", "output")
OPTIONAL_FIELDS = ("input",)
RECORD_FIELDS = ("instruction", "input", "output")
MAX_ERRORS_SHOWN = 10


def parse_field_mapping(text: str | None) -> dict[str, str]:
    """Parse `instruction=prompt,output=completion` into {our field: the file's field}.

    >>> parse_field_mapping("instruction=prompt,output=completion")
    {'instruction': 'prompt', 'output': 'completion'}
    """
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        ours, sep, theirs = (piece.strip() for piece in part.partition("="))
        if not sep or not ours or not theirs:
            raise SftkitError(
                f"--fields: {part!r} is not of the form field=name "
                "(e.g. instruction=prompt,output=completion)"
            )
        if ours not in RECORD_FIELDS:
            raise SftkitError(
                f"--fields: {ours!r} is not a record field; expected one of {RECORD_FIELDS}"
            )
        mapping[ours] = theirs
    return mapping


def _read_raw(path: Path) -> list[Any]:
    """The file's records, as parsed JSON values: a JSON array, or one JSON value per line.

    UTF-8 with or without a byte-order mark (which some Windows editors write)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SftkitError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise SftkitError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise SftkitError(f"{path}: cannot read: {error.strerror}") from None
    stripped = text.lstrip()
    if not stripped:
        raise SftkitError(f"{path}: the file is empty")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SftkitError(
                f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
        if not isinstance(data, list):
            raise SftkitError(f"{path}: expected a JSON array of records")
        return data
    if "\n" in stripped.rstrip():
        try:
            json.loads(text)
        except json.JSONDecodeError:
            pass  # JSON Lines, parsed below
        else:
            raise SftkitError(f"{path}: expected a JSON array of records or one record per "
                              "line (JSON Lines), found a single multi-line JSON value")
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise SftkitError(
                f"{path}: line {line_number} (record {len(records)}) is not valid JSON: "
                f"{error.msg} at column {error.colno}"
            ) from None
    return records


def validate_records(
    raw: Sequence[Any], source: str, fields: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Check every record and return normalised copies (our field names, `input` filled in).

    All problems are collected and reported together (the first few in full), each naming
    the source, the record's index and the field.
    """
    fields = dict(fields or {})
    fmt = detect_format(raw, source, fields)
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"{source}: record {index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, got {type(item).__name__}")
            continue
        if fmt != ALPACA:
            found = formats_of(item)
            problems += ([f"{where}: fields of several formats ({', '.join(found)})"]
                         if len(found) > 1 else chat_problems(item, fmt, where))
            records.append(dict(item))
            continue
        record: dict[str, Any] = {
            key: value for key, value in item.items() if key not in fields.values()
        }
        for name in RECORD_FIELDS:
            key = fields.get(name, name)
            if key not in item:
                if name in OPTIONAL_FIELDS:
                    record[name] = ""
                    continue
                problems.append(f"{where}: missing field {key!r}")
                continue
            value = item[key]
            if value is None and name in OPTIONAL_FIELDS:
                value = ""
            if not isinstance(value, str):
                problems.append(
                    f"{where}: field {key!r} must be a string, got {type(value).__name__}"
                )
                continue
            record[name] = value
        records.append(record)
    if problems:
        shown = "\n  ".join(problems[:MAX_ERRORS_SHOWN])
        more = len(problems) - MAX_ERRORS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        hint = "" if fields or fmt != ALPACA else (
            f" (formats known: {KNOWN_SHAPES}; use --fields to map other field names)")
        raise SftkitError(f"{len(problems)} invalid record(s){hint}:\n  {shown}{tail}")
    if not records:
        raise SftkitError(f"{source}: no records")
    return records


def load_records(path: str | Path, fields: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Read a JSON array or JSONL file of instruction records and validate it."""
    path = Path(path)
    return validate_records(_read_raw(path), str(path), fields)


@dataclass
class RecordReport:
    """What is worth knowing about a set of records before training on them.

    Nothing is dropped: empty fields, duplicates and over-long records are counted and shown
    with their indices in the source (the `record N` of validation errors).

    >>> report = inspect_records([{"instruction": " ", "input": "", "output": "a"},
    ...                           {"instruction": "b", "input": "", "output": ""}])
    >>> report.warnings()
    ['1 record(s) with empty or whitespace-only instructions (indices 0)', \
'1 record(s) with empty or whitespace-only outputs (indices 1)']
    """

    total: int
    empty_instructions: list[int] = field(default_factory=list)
    empty_outputs: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # repeats of an earlier record
    conflicting: list[int] = field(default_factory=list)  # same prompt, other output
    over_max_length: list[int] = field(default_factory=list)  # filled in once tokenized
    unlearnable: list[int] = field(default_factory=list)  # nothing learned within max_length

    def warnings(self) -> list[str]:
        lines = []
        for label, indices in (
            ("empty or whitespace-only instructions", self.empty_instructions),
            ("empty or whitespace-only outputs", self.empty_outputs),
            ("exact duplicates of an earlier record", self.duplicates),
            ("same instruction and input as an earlier record, different output",
             self.conflicting),
            ("more tokens than max_length (truncated in training)", self.over_max_length),
            ("nothing to learn once truncated to max_length (left out of training)",
             self.unlearnable),
        ):
            if indices:
                lines.append(f"{len(indices)} record(s) with {label} "
                             f"(indices {capped_list(indices)})")
        return lines


def capped_list(items: Sequence[object], limit: int = MAX_ERRORS_SHOWN) -> str:
    """The first `limit` items (record indices, names), then how many more.

    >>> capped_list(range(12), limit=3)
    '0, 1, 2, ... (9 more)'
    """
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def inspect_records(records: Sequence[Mapping[str, Any]]) -> RecordReport:
    """Count empty instructions and outputs, exact duplicates and conflicting duplicates."""
    report = RecordReport(total=len(records))
    seen_outputs: dict[object, str] = {}
    for index, record in enumerate(records):
        prompts, answers, key = _inspected_parts(record)
        if not all(text.strip() for text in prompts):
            report.empty_instructions.append(index)
        if not all(text.strip() for text in answers):
            report.empty_outputs.append(index)
        if key in seen_outputs:
            if seen_outputs[key] == answers[-1]:
                report.duplicates.append(index)
            else:
                report.conflicting.append(index)
        else:
            seen_outputs[key] = answers[-1]
    return report


def _inspected_parts(record: Mapping[str, Any]) -> tuple[list[str], list[str], object]:
    """The user texts, the assistant texts and what the last answer answers (for duplicates).
    An Alpaca record's instruction and input are told apart, as in the book's data."""
    if record_format(record) == ALPACA:
        return [record["instruction"]], [record["output"]], (record["instruction"],
                                                             record["input"])
    messages = record_messages(record)
    return ([m["content"] for m in messages if m["role"] == "user"],
            [m["content"] for m in messages if m["role"] == "assistant"],
            tuple((m["role"], m["content"]) for m in messages[:-1]))


@dataclass(frozen=True)
class Splits:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]

    def items(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]

    @classmethod
    def select(cls, records: Sequence[dict[str, Any]], indices: Mapping[str, Sequence[int]]
               ) -> Splits:
        """The splits holding `records[i]` for each split's indices (from `split_indices`)."""
        return cls(**{name: [records[i] for i in part] for name, part in indices.items()})


def split_records(
    records: Sequence[dict[str, Any]],
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    seed: int | None = None,
) -> Splits:
    """Split like the reference: the first 85 % train, the next 10 % test, the rest validation.

    Sizes are `int(n * fraction)` as in the book (1,100 records → 935 / 110 / 55). With a
    `seed`, the records are first shuffled by a generator of their own, so the split is the
    same on every run and machine.

    >>> splits = split_records([{"i": i} for i in range(20)])
    >>> len(splits.train), len(splits.test), len(splits.val)
    (17, 2, 1)
    """
    return Splits.select(records, split_indices(len(records), train_fraction, test_fraction,
                                                seed))


def split_indices(
    count: int,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    seed: int | None = None,
) -> dict[str, list[int]]:
    """The source indices of each split of `count` records (see `split_records`).

    An empty training split is refused here, before anything is tokenized or written.

    >>> split_indices(6, 0.5, 0.2, seed=1)
    {'train': [2, 3, 5], 'test': [0], 'val': [4, 1]}
    >>> split_indices(1)
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: the train split would be empty: 1 record(s) × train fraction 0.85 \
= 0.85, rounded down to 0; give more records or a larger train fraction
    """
    if not (0 < train_fraction < 1 and 0 <= test_fraction < 1):
        raise SftkitError(
            f"split fractions must lie in (0, 1): train {train_fraction}, test {test_fraction}"
        )
    if train_fraction + test_fraction > 1:
        raise SftkitError(
            f"train fraction {train_fraction} + test fraction {test_fraction} exceed 1"
        )
    order = list(range(count))
    if seed is not None:
        random.Random(seed).shuffle(order)  # the same permutation as shuffling the records
    train_end = int(count * train_fraction)
    if train_end == 0:
        raise SftkitError(
            f"the train split would be empty: {count} record(s) × train fraction "
            f"{train_fraction} = {count * train_fraction:.4g}, rounded down to 0; give more "
            "records or a larger train fraction")
    test_end = train_end + int(count * test_fraction)
    return {"train": order[:train_end], "test": order[train_end:test_end],
            "val": order[test_end:]}
