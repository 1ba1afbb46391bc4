"""Record formats: Alpaca, OpenAI `messages`, ShareGPT `conversations` and prompt/completion.

A file holds records of one format, found from the fields of its records. Records keep their
own shape everywhere (the split files too); `record_messages` gives any record as a
conversation, `[{"role": "system"|"user"|"assistant", "content": ...}, ...]`, ending with the
assistant's answer.

Example:
    >>> detect_format([{"conversations": [{"from": "human", "value": "Hi"},
    ...                                    {"from": "gpt", "value": "Hello."}]}], "chat.json")
    'sharegpt'
    >>> record_messages({"prompt": "2+2?", "completion": "4"})
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftkit.errors import SftkitError

ALPACA = "alpaca"
MESSAGES = "messages"
SHAREGPT = "sharegpt"
PROMPT_COMPLETION = "prompt_completion"
#: The fields that mark a record as one of each format.
SIGNATURES: dict[str, tuple[str, ...]] = {
    ALPACA: ("instruction",), MESSAGES: ("messages",), SHAREGPT: ("conversations",),
    PROMPT_COMPLETION: ("prompt", "completion"),
}
KNOWN_SHAPES = ("alpaca (instruction, input, output), OpenAI messages (messages), ShareGPT "
                "(conversations), prompt/completion (prompt, completion)")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "system": "system"}
#: The list field, and the role and text fields of each of its messages, per chat format.
CHAT_FIELDS = {MESSAGES: ("messages", "role", "content"),
               SHAREGPT: ("conversations", "from", "value")}
DEFAULT_INPUT_SEPARATOR = "\n\n"


def formats_of(item: Mapping[str, Any]) -> list[str]:
    """The formats whose marking fields `item` has."""
    return [name for name, keys in SIGNATURES.items() if any(key in item for key in keys)]


def detect_format(raw: Sequence[Any], source: str, fields: Mapping[str, str] | None = None
                  ) -> str:
    """The one format of a file's records: that of the first record with the fields of exactly
    one format. A record of another format is an error; so is a file where no record has a
    known shape, unless it is validated as Alpaca (with a `--fields` mapping, or by default so
    the missing fields are named).

    >>> detect_format([{"instruction": "a", "output": "b"}, {"messages": []}], "x.json")
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: x.json: mixed record formats: record 0 is alpaca, record 1 is \
messages; a file holds records of one format
    """
    if fields:
        return ALPACA
    first: tuple[int, str] | None = None
    for index, item in enumerate(raw):
        found = formats_of(item) if isinstance(item, dict) else []
        if len(found) != 1:
            continue
        if first is None:
            first = (index, found[0])
        elif found[0] != first[1]:
            raise SftkitError(f"{source}: mixed record formats: record {first[0]} is {first[1]}, "
                              f"record {index} is {found[0]}; a file holds records of one format")
    return ALPACA if first is None else first[1]


def record_format(record: Mapping[str, Any]) -> str:
    """The format of a validated record (its fields say it unambiguously)."""
    found = formats_of(record)
    return found[0] if len(found) == 1 else ALPACA


def chat_problems(item: Mapping[str, Any], fmt: str, where: str) -> list[str]:
    """What is wrong with a record of a conversation format, each naming record and field."""
    if fmt == PROMPT_COMPLETION:
        return [f"{where}: missing field {key!r}" if key not in item else
                f"{where}: field {key!r} must be a string, got {type(item[key]).__name__}"
                for key in ("prompt", "completion") if not isinstance(item.get(key), str)]
    list_field, role_field, text_field = CHAT_FIELDS[fmt]
    turns = item.get(list_field)
    if not isinstance(turns, list) or not turns:
        return [f"{where}: field {list_field!r} must be a non-empty list of messages"]
    roles = SHAREGPT_ROLES if fmt == SHAREGPT else {role: role for role in ROLES}
    problems = []
    for number, turn in enumerate(turns):
        at = f"{where}: {list_field}[{number}]"
        if not isinstance(turn, dict):
            problems.append(f"{at}: expected an object, got {type(turn).__name__}")
        elif turn.get(role_field) not in roles:
            problems.append(f"{at}.{role_field}: expected one of {', '.join(roles)}, got "
                            f"{turn.get(role_field)!r}")
        elif not isinstance(turn.get(text_field), str):
            problems.append(f"{at}.{text_field}: must be a string, got "
                            f"{type(turn.get(text_field)).__name__}")
    if problems:
        return problems
    order = turn_order_problem([roles[turn[role_field]] for turn in turns])
    return [f"{where}: {list_field}{order}"] if order else []


def turn_order_problem(roles: Sequence[str]) -> str | None:
    """Why a sequence of roles is not a trainable conversation (an optional system message
    first, then user and assistant in turn, ending with the assistant), or None.

    >>> turn_order_problem(["system", "user", "assistant", "assistant"])
    '[3]: expected a user message, got assistant'
    """
    expected = "user"
    for index, role in enumerate(roles):
        if index == 0 and role == "system":
            continue
        if role != expected:
            return f"[{index}]: expected a {expected} message, got {role}"
        expected = "assistant" if role == "user" else "user"
    if expected != "user":
        return ": the last message must be an assistant message (the answer to learn)"
    return None


def record_messages(record: Mapping[str, Any],
                    input_separator: str = DEFAULT_INPUT_SEPARATOR) -> list[dict[str, str]]:
    """A validated record as a conversation. An Alpaca record's input follows its instruction
    after `input_separator` (each prompt style has its own, so its text stays the book's).

    >>> record_messages({"instruction": "Spell it.", "input": "Ocassion", "output": "Occasion"})
    [{'role': 'user', 'content': 'Spell it.\\n\\nOcassion'}, \
{'role': 'assistant', 'content': 'Occasion'}]
    """
    fmt = record_format(record)
    if fmt == ALPACA:
        user = record["instruction"]
        if record.get("input"):
            user += input_separator + record["input"]
        return [{"role": "user", "content": user},
                {"role": "assistant", "content": record.get("output", "")}]
    if fmt == PROMPT_COMPLETION:
        return [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record.get("completion", "")}]
    list_field, role_field, text_field = CHAT_FIELDS[fmt]
    roles = SHAREGPT_ROLES if fmt == SHAREGPT else {role: role for role in ROLES}
    return [{"role": roles[turn[role_field]], "content": turn[text_field]}
            for turn in record[list_field]]


def is_conversation(record: Mapping[str, Any]) -> bool:
    """Whether a record is a chat record (messages, ShareGPT, prompt/completion), not Alpaca.

    >>> is_conversation({"prompt": "2+2?", "completion": "4"}), is_conversation(
    ...     {"instruction": "Add.", "input": "2+2", "output": "4"})
    (True, False)
    """
    return record_format(record) != ALPACA


def split_last_answer(record: Mapping[str, Any],
                      input_separator: str = DEFAULT_INPUT_SEPARATOR
                      ) -> tuple[list[dict[str, str]], str]:
    """A validated record's conversation up to its LAST assistant message (what a model is
    asked to continue), and that message's content (the reference answer). For an Alpaca
    record the reference is its `output`.

    >>> so_far, reference = split_last_answer({"messages": [
    ...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
    ...     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Times 3?"},
    ...     {"role": "assistant", "content": "12"}]})
    >>> [message["role"] for message in so_far], reference
    (['system', 'user', 'assistant', 'user'], '12')
    """
    messages = record_messages(record, input_separator)
    answers = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not answers:
        raise SftkitError("a record without an assistant message has no answer to compare with")
    last = answers[-1]
    return messages[:last], messages[last]["content"]


def render_readably(messages: Sequence[Mapping[str, str]]) -> str:
    """A conversation as plain lines `role: content` (for a judge or a report, not a model).

    >>> print(render_readably([{"role": "user", "content": "2+2?"},
    ...                        {"role": "assistant", "content": "4"}]))
    user: 2+2?
    assistant: 4
    """
    return "\n".join(f"{message['role']}: {message['content']}" for message in messages)
