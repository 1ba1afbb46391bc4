"""`sftkit prepare` end to end, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

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


def write_records(path, count, **overrides):
    rows = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
            for i in range(count)]
    for index, record in overrides.items():
        rows[int(index.lstrip("r"))].update(record)
    path.write_text(json.dumps(rows))
    return path


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_interrupted_prepare_keeps_the_old_set_whole(tmp_path, monkeypatch):
    """Bug 8: a failure after the first file left a new train.json beside the old others."""
    import sftkit.data.prepare as prepare_module

    source = write_records(tmp_path / "data.json", 40)
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out), "--seed", "1"]) == 0
    old = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(old) == ["summary.json", "test.json", "train.json", "val.json"]

    real_write = prepare_module.write_json_atomic
    written = []

    def fail_after_the_first_file(path, data, **kwargs):
        if written:
            raise KeyboardInterrupt  # the kill, mid-way
        written.append(path)
        real_write(path, data, **kwargs)

    monkeypatch.setattr(prepare_module, "write_json_atomic", fail_after_the_first_file)
    assert main(["prepare", "--data", str(source), "--out", str(out), "--seed", "2"]) == 130
    assert written  # the new train.json was written before the interruption
    assert {path.name: path.read_bytes() for path in out.iterdir()} == old
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.json", "out"]


def test_prepare_refuses_to_replace_a_directory_with_other_files(tmp_path, capsys):
    source = write_records(tmp_path / "data.json", 40)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["prepare", "--data", str(source), "--out", str(out)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_split_smaller_than_a_batch_gives_valid_json(tmp_path, capsys):
    """Bug 9: the padding of no batch at all was NaN in summary.json."""
    source = write_records(tmp_path / "data.json", 6)
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out), "--batch-size", "8"]) == 0
    summary = strict_json(out / "summary.json")
    assert summary["splits"]["train"] == 5 and summary["padding_fraction"] is None
    printed = capsys.readouterr().out
    assert "not measured: no full batch of 8 in 5 training records" in printed
    assert "note: the train split (5 records) is smaller than one batch of 8" in printed
    for name in ("train", "val", "test"):
        strict_json(out / f"{name}.json")


def test_empty_train_split_is_refused_at_prepare_time(tmp_path, capsys):
    source = write_records(tmp_path / "data.json", 1)
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert ("the train split would be empty: 1 record(s) × train fraction 0.85 = 0.85, rounded "
            "down to 0") in error
    assert not out.exists()


def test_empty_instructions_are_counted_and_named(tmp_path, capsys):
    source = write_records(tmp_path / "data.json", 20, r3={"instruction": "  "},
                           r7={"instruction": ""})
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out)]) == 0
    assert strict_json(out / "summary.json")["empty_instructions"] == 2
    printed = capsys.readouterr().out
    assert "empty instructions  2" in printed
    assert "note: 2 record(s) with empty or whitespace-only instructions (indices 3, 7)" in printed


def test_truncated_records_are_named_by_their_source_index(tmp_path, capsys):
    long_text = " ".join(["word"] * 60)
    source = write_records(tmp_path / "data.json", 30, r4={"output": long_text},
                           r22={"input": long_text})
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--out", str(out), "--seed", "5",
                 "--max-length", "40"]) == 0
    assert strict_json(out / "summary.json")["over_max_length"] == 2
    printed = capsys.readouterr().out
    assert ("note: 2 record(s) with more tokens than max_length (truncated in training) "
            "(indices 4, 22)") in printed


def _chat(number):
    return {"messages": [{"role": "system", "content": "Count."},
                         {"role": "user", "content": f"Start at {number}."},
                         {"role": "assistant", "content": f"{number}."},
                         {"role": "user", "content": "Next?"},
                         {"role": "assistant", "content": f"{number + 1}."}]}


def test_prepare_messages_file_with_show(tmp_path, capsys):
    source = tmp_path / "chat.jsonl"
    rows = [_chat(i) for i in range(20)]
    rows[0]["messages"][1]["content"] = "Start " * 200 + "at 0."  # its answers are cut away
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    assert main(["prepare", "--data", str(source), "--style", "chatml", "--max-length", "150",
                 "--show", "2", "--out", str(out)]) == 0
    assert json.loads((out / "train.json").read_text())[1] == rows[1]  # its own shape
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["format"], summary["loss_on"], summary["unlearnable"]) == (
        "messages", "assistant", 1)
    printed = capsys.readouterr().out
    assert ("<|im_start|>system\nCount.<|im_end|>\n<|im_start|>user\nStart at 1.<|im_end|>\n"
            "<|im_start|>assistant\n[[1.<|im_end|>\n]]<|im_start|>user\nNext?<|im_end|>\n"
            "<|im_start|>assistant\n[[2.<|im_end|>\n<|endoftext|>]]") in printed
    assert "(cut: training sees the first 150 tokens of" in printed
    assert "nothing learned" in printed and "1 record(s) with nothing to learn" in printed


def test_prepare_uses_the_tokenizers_own_chat_template_by_default(tmp_path, monkeypatch):
    """`sftkit prepare --tokenizer MODEL` renders with MODEL's chat template unless --style names
    another: the data is prepared in the format the model will be trained and served with."""
    import sftkit.checkpoints as checkpoints
    from sftkit.tokenizers import HFTokenizer, smollm2_tokenizer
    from sftkit.tokenizers.hf import ChatTemplate

    fixture = Path(__file__).parents[1] / "fixtures" / "templates" / "smollm2.jinja"
    base = smollm2_tokenizer()
    templated = HFTokenizer(base.backend, "with-template", base.eos_id,
                            chat_template=ChatTemplate(fixture.read_text(), {}, "fixture"))
    monkeypatch.setattr(checkpoints, "load_pretrained_tokenizer",
                        lambda source, config=None: templated)
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([{"messages": [{"role": "user", "content": f"Q{i}"},
                                              {"role": "assistant", "content": f"A{i}"}]}
                                for i in range(20)]))
    for style, expected in ((None, "template"), ("chatml", "chatml")):
        out = tmp_path / f"out-{expected}"
        argv = ["prepare", "--data", str(data), "--out", str(out), "--tokenizer", "some/model"]
        assert main(argv + (["--style", style] if style else [])) == 0
        assert json.loads((out / "summary.json").read_text())["style"] == expected
