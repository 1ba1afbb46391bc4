"""Loading, validation errors, inspection and the split."""

from __future__ import annotations

import json

import pytest

from sftkit.data.records import (
    inspect_records,
    load_records,
    parse_field_mapping,
    split_records,
)
from sftkit.errors import SftkitError

GOOD = {"instruction": "Add 2 and 3.", "input": "", "output": "2 plus 3 is 5."}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_json_array_and_jsonl_give_the_same_records(tmp_path):
    records = [GOOD, {"instruction": "Spell it.", "output": "It.", "task": "spelling"}]
    array = write(tmp_path, "a.json", json.dumps(records))
    lines = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    loaded = load_records(array)
    assert loaded == load_records(lines)
    assert loaded[1] == {"instruction": "Spell it.", "input": "", "output": "It.",
                         "task": "spelling"}


def test_null_input_becomes_empty(tmp_path):
    path = write(tmp_path, "a.json", json.dumps([{**GOOD, "input": None}]))
    assert load_records(path)[0]["input"] == ""


def test_field_mapping(tmp_path):
    path = write(tmp_path, "a.jsonl", json.dumps({"prompt": "Hi?", "completion": "Hi."}))
    records = load_records(path, parse_field_mapping("instruction=prompt,output=completion"))
    assert records == [{"instruction": "Hi?", "input": "", "output": "Hi."}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps([GOOD, {"input": "", "output": "x"}]),
         "record 1: missing field 'instruction'"),
        (json.dumps([GOOD, GOOD, {**GOOD, "output": 5}]),
         "record 2: field 'output' must be a string, got int"),
        (json.dumps([{**GOOD, "input": ["a"]}]), "record 0: field 'input' must be a string"),
        (json.dumps([GOOD, "just text"]), "record 1: expected an object, got str"),
        (json.dumps(GOOD, indent=2), "expected a JSON array of records or one record per line"),
        (json.dumps({"instruction": "x"}), "record 0: missing field 'output'"),
        ("[" + json.dumps(GOOD) + ",\n {\"instruction\": }]", "invalid JSON at line 2"),
        (json.dumps(GOOD) + "\n{not json}\n", "line 2 (record 1) is not valid JSON"),
        ("", "the file is empty"),
        ("[]", "no records"),
    ],
)
def test_validation_errors_name_file_record_and_field(tmp_path, content, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(SftkitError) as error:
        load_records(path)
    assert message in str(error.value)
    assert str(path) in str(error.value) or "record" in str(error.value)


def test_all_problems_reported_together(tmp_path):
    bad = [{"output": "x"}] * 14
    path = write(tmp_path, "bad.json", json.dumps(bad))
    with pytest.raises(SftkitError) as error:
        load_records(path)
    text = str(error.value)
    assert "14 invalid record(s)" in text and "... and 4 more" in text
    assert f"{path}: record 0: missing field 'instruction'" in text
    assert "--fields" in text


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(SftkitError, match="no such file"):
        load_records(tmp_path / "nope.json")
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"instruction": "caf\xe9", "output": "x"}]')
    with pytest.raises(SftkitError, match="not UTF-8"):
        load_records(path)


@pytest.mark.parametrize("spec", ["instruction", "instruction=", "question=prompt"])
def test_bad_field_mapping(spec):
    with pytest.raises(SftkitError, match="--fields"):
        parse_field_mapping(spec)


def test_inspect_counts_without_dropping():
    records = [
        GOOD,
        {**GOOD},  # exact duplicate
        {**GOOD, "output": "5."},  # same prompt, other output
        {"instruction": "Say nothing.", "input": "", "output": "  \n"},
    ]
    report = inspect_records(records)
    assert (report.total, report.duplicates, report.conflicting, report.empty_outputs) == (
        4, [1], [2], [3])
    assert len(report.warnings()) == 3


def test_split_follows_the_reference():
    records = [{"i": i} for i in range(1100)]
    splits = split_records(records)
    assert (len(splits.train), len(splits.test), len(splits.val)) == (935, 110, 55)
    assert splits.train == records[:935]
    assert splits.test == records[935:1045]
    assert splits.val == records[1045:]


def test_seeded_split_is_deterministic_and_a_partition():
    records = [{"i": i} for i in range(97)]
    first = split_records(records, 0.8, 0.1, seed=7)
    assert first == split_records(records, 0.8, 0.1, seed=7)
    assert first != split_records(records, 0.8, 0.1, seed=8)
    ids = sorted(r["i"] for _, part in first.items() for r in part)
    assert ids == list(range(97))
    assert (len(first.train), len(first.test)) == (77, 9)


@pytest.mark.parametrize(("train", "test"), [(0.0, 0.1), (1.0, 0.0), (0.9, 0.2), (0.5, -0.1)])
def test_bad_split_fractions(train, test):
    with pytest.raises(SftkitError, match="fraction"):
        split_records([GOOD] * 10, train, test)


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    """Bug 15: a BOM (as some Windows editors write) made the file unreadable."""
    record = {"instruction": "Spell café.", "input": "", "output": "c-a-f-é"}
    array = tmp_path / "data.json"
    array.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8-sig")
    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(record) + "\n",
                     encoding="utf-8-sig")
    assert array.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_records(array) == [record]
    assert load_records(lines) == [record, record]
