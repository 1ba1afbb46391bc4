"""`sftkit prepare` end to end, through the CLI."""

from __future__ import annotations

import json

from sftkit.cli import main
from sftkit.data.embedded import load_embedded_records


def test_prepare_embedded(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", "--out", str(out)]) == 0
    records = load_embedded_records()
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in
             ("train", "val", "test")}
    train_end = int(len(records) * 0.85)
    test_end = train_end + int(len(records) * 0.10)
    assert parts["train"] == records[:train_end]
    assert parts["test"] == records[train_end:test_end]
    assert parts["val"] == records[test_end:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"] == {name: len(part) for name, part in parts.items()}
    assert summary["over_max_length"] == 0 and summary["duplicates"] == 0
    grouped, random_ = summary["padding_fraction"]["length_grouped"], \
        summary["padding_fraction"]["random"]
    assert 0 <= grouped < random_ < 1
    printed = capsys.readouterr().out
    assert "padding @ batch 8" in printed and "tokens/example" in printed


def test_prepare_local_jsonl_with_field_mapping_and_seed(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Add {i} and 1.", "completion": f"{i} plus 1 is {i + 1}."}
            for i in range(40)]
    rows.append(rows[0])
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    args = ["prepare", "--data", str(source), "--fields", "instruction=prompt,output=completion",
            "--style", "chatml", "--seed", "3", "--max-length", "12", "--out", str(out)]
    assert main(args) == 0
    first = {name: (out / f"{name}.json").read_text() for name in ("train", "val", "test")}
    printed = capsys.readouterr().out
    assert "1 record(s) with exact duplicates" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["over_max_length"] == 41 and summary["style"] == "chatml"
    assert main(args) == 0
    assert first == {name: (out / f"{name}.json").read_text() for name in first}


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "bad.json"
    source.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": 3}]))
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{source}: record 1: field 'instruction' must be a string, got int" in error
    assert f"{source}: record 1: missing field 'output'" in error
    assert "Traceback" not in error
    assert not out.exists()
