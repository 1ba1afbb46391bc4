"""Record formats: detection per file, validation errors naming file, record and field."""

from __future__ import annotations

import json

import pytest

from sftkit.data.formats import record_messages
from sftkit.data.prompts import get_style
from sftkit.data.records import inspect_records, load_records
from sftkit.errors import SftkitError

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


def write(tmp_path, records):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records))
    return path


@pytest.mark.parametrize("record", [
    CHAT, {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    {"prompt": "Hi", "completion": "Yo", "id": 7}])
def test_conversation_formats_keep_their_shape(tmp_path, record):
    assert load_records(write(tmp_path, [record, record])) == [record, record]
    assert record_messages(record)[-2:] == [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Yo"}]


@pytest.mark.parametrize(("records", "message"), [
    ([{"instruction": "a", "output": "b"}, CHAT],
     "mixed record formats: record 0 is alpaca, record 1 is messages"),
    ([CHAT, {"messages": [{"role": "bot", "content": "x"}]}],
     "record 1: messages[0].role: expected one of system, user, assistant, got 'bot'"),
    ([CHAT, {"messages": [{"role": "user", "content": None}]}],
     "record 1: messages[0].content: must be a string, got NoneType"),
    ([CHAT, {"messages": []}], "record 1: field 'messages' must be a non-empty list"),
    ([CHAT, {"messages": [{"role": "user", "content": "a"}]}],
     "record 1: messages: the last message must be an assistant message"),
    ([CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}],
     "record 1: messages[1]: expected a assistant message, got system"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "bard", "value": "b"}]}],
     "record 0: conversations[1].from: expected one of human, user, gpt, assistant, system"),
    ([{"prompt": "a"}], "record 0: missing field 'completion'"),
    ([{"prompt": "a", "completion": 3}], "record 0: field 'completion' must be a string"),
    ([CHAT, {**CHAT, "instruction": "x"}], "record 1: fields of several formats"),
    ([{"text": "a"}], "formats known: alpaca (instruction, input, output), OpenAI messages"),
])
def test_bad_records_name_file_record_and_field(tmp_path, records, message):
    path = write(tmp_path, records)
    with pytest.raises(SftkitError) as error:
        load_records(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_inspect_conversations():
    empty = {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}
    other = {"messages": [*CHAT["messages"][:2], {"role": "assistant", "content": "No"}]}
    report = inspect_records([CHAT, CHAT, empty, other])
    assert (report.duplicates, report.conflicting) == ([1], [3])
    assert (report.empty_instructions, report.empty_outputs) == ([2], [2])


@pytest.mark.parametrize("name", ["alpaca", "phi3", "chatml"])
@pytest.mark.parametrize("record", [
    {"instruction": "Spell it.", "input": "Ocassion", "output": "Occasion"},
    {"instruction": "Say hi.", "input": "", "output": "Hi."}])
def test_render_of_an_alpaca_record_is_format_example(name, record):
    style = get_style(name)
    messages = style.record_messages(record)
    assert style.render(messages) == style.format_example(record)
    assert style.render(messages[:1], add_generation_prompt=True) == style.format_prompt(record)
    assert style.format_example(record).startswith(style.format_prompt(record))
