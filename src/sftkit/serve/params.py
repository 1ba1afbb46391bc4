"""Request parsing shared by both APIs: JSON bodies, typed fields, model names, messages.

Every check raises `RequestError` with the status and a message naming the field at fault, so
clients see `{"error": "options.temperature must be a number, got 'hot'"}` rather than a 500.

Example:
    >>> number({"temperature": 0.7}, "temperature", minimum=0)
    0.7
    >>> integer({"num_predict": "5"}, "num_predict", where="options.")
    Traceback (most recent call last):
    ...
    sftkit.serve.jobs.RequestError: options.num_predict must be an integer, got '5'
    >>> json_object(b'{"prompt": "\\\\ud800"}')
    Traceback (most recent call last):
    ...
    sftkit.serve.jobs.RequestError: prompt holds a lone UTF-16 surrogate ('\\ud800' at \
character 0), which is not text: send each character whole (a surrogate pair or UTF-8)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from sftkit.errors import SftkitError
from sftkit.generation.grammar import JsonFormat
from sftkit.serve.jobs import RequestError

ROLES = ("system", "user", "assistant")
SEED_RANGE = 2**63  # torch.Generator.manual_seed takes a 64-bit integer
SHOWN_CHARS = 60  # the longest value a message echoes back
# json.loads lets "\ud800" through as a lone surrogate code point, which is not text: no
# tokenizer encodes it and no UTF-8 response could echo it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Where a surrogate can come from in a body: a \uD800-\uDFFF escape, or the raw UTF-8-style
# bytes of one (json.loads decodes bytes with surrogatepass). A body without either, nearly
# every body, is not walked.
_SURROGATE_SOURCE = re.compile(rb"\\[uU][dD][89a-fA-F]|\xed[\xa0-\xbf]")


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply to read (no field of "
                                "this API nests more than a few levels)") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if _SURROGATE_SOURCE.search(body):
        _refuse_lone_surrogates(data)
    return data


def _refuse_lone_surrogates(data: dict[str, Any]) -> None:
    """A 400 naming the first field (or key) whose text holds a lone surrogate."""
    waiting: list[tuple[str, Any]] = [("", data)]
    while waiting:  # a loop, not recursion: the body may nest as deep as json.loads allowed
        path, value = waiting.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"{path or 'the request body'} has a key that")
                waiting.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            waiting.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def _check_text(text: str, name: str) -> None:
    found = _LONE_SURROGATE.search(text)
    if found:
        raise RequestError(400, f"{name} holds a lone UTF-16 surrogate ({found.group()!r} at "
                                f"character {found.start()}), which is not text: send each "
                                "character whole (a surrogate pair or UTF-8)")


def shown(value: Any) -> str:
    """`repr(value)` for a message, cut short: a client's mistake may be a megabyte long.

    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (102 characters)"
    """
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 1]}... " \
                                                  f"({len(text)} characters)"


def integer(data: Mapping[str, Any], key: str, *, minimum: int | None = None,
            maximum: int | None = None, where: str = "") -> int | None:
    """`data[key]` as an int (None when absent or null); 2.0 counts as 2, True does not."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{where}{key} must be an integer, got {shown(value)}")
    _check_range(value, minimum, maximum, f"{where}{key}")
    return value


def number(data: Mapping[str, Any], key: str, *, minimum: float | None = None,
           maximum: float | None = None, where: str = "") -> float | None:
    """`data[key]` as a float (None when absent or null)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(400, f"{where}{key} must be a number, got {shown(value)}")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise RequestError(400, f"{where}{key} must be a finite number, got {value}")
    _check_range(value, minimum, maximum, f"{where}{key}")
    return float(value)


def _check_range(value: float, minimum: float | None, maximum: float | None, name: str) -> None:
    if minimum is not None and value < minimum:
        raise RequestError(400, f"{name} must be at least {minimum}, got {shown(value)}")
    if maximum is not None and value > maximum:
        raise RequestError(400, f"{name} must be at most {maximum}, got {shown(value)}")


def string(data: Mapping[str, Any], key: str, *, where: str = "") -> str | None:
    """`data[key]` as a str (None when absent or null)."""
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f"{where}{key} must be a string, got {shown(value)}")
    return value


def boolean(data: Mapping[str, Any], key: str, default: bool, *, where: str = "") -> bool:
    """`data[key]`, which must be true or false (`default` when absent or null)."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(400, f"{where}{key} must be true or false, got {shown(value)}")
    return value


def mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`data[key]`, which must be an object (`{}` when absent or null).

    >>> mapping({"options": []}, "options")
    Traceback (most recent call last):
    ...
    sftkit.serve.jobs.RequestError: options must be an object, got []
    """
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"{key} must be an object, got {shown(value)}")
    return value


def array(data: Mapping[str, Any], key: str) -> list[Any]:
    """`data[key]`, which must be a list (`[]` when absent or null)."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(400, f"{key} must be a list, got {shown(value)}")
    return value


def stop_strings(value: Any, *, where: str = "") -> tuple[str, ...]:
    """A stop string or a list of them; empty strings are dropped (they would stop at once)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(stop, str) for stop in value):
        raise RequestError(400, f"{where}stop must be a string or a list of strings, "
                                f"got {shown(value)}")
    return tuple(stop for stop in value if stop)


def output_format(value: Any, read: Callable[[Any], JsonFormat | None]) -> JsonFormat | None:
    """A request's output format read by `read` (`sftkit.generation.grammar.ollama_format` or
    `openai_response_format`), or a 400 saying what is wrong with it.

    >>> from sftkit.generation.grammar import ollama_format
    >>> output_format({"type": "object", "properties": {"n": {"type": "numbr"}}}, ollama_format)
    Traceback (most recent call last):
    ...
    sftkit.serve.jobs.RequestError: format is not a usable JSON schema: Invalid type: numbr
    """
    try:
        return read(value)
    except SftkitError as error:
        raise RequestError(400, str(error)) from None


def seed(data: Mapping[str, Any], key: str = "seed", *, where: str = "") -> int | None:
    """A seed; a negative one means "random" as in Ollama."""
    value = integer(data, key, where=where)
    if value is None or value < 0:
        return None
    if value >= SEED_RANGE:
        raise RequestError(400, f"{where}{key} must be below 2**63, got {shown(value)}")
    return value


def accepted_names(name: str) -> frozenset[str]:
    """The model names a server called `name` answers to: Ollama clients add `:latest`."""
    base = name.removesuffix(":latest")
    return frozenset((base, f"{base}:latest"))


def listed_name(name: str) -> str:
    """The name as Ollama lists it: with a tag (`:latest` unless the name has one)."""
    return name if ":" in name else f"{name}:latest"


def requested_model(data: Mapping[str, Any], served: str, key: str = "model") -> str:
    """The model the request names, checked against the served one (400 if none, 404 if
    another)."""
    model = data.get(key)
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"{key} must be a string, got {shown(model)}")
    if not model or not model.strip():
        raise RequestError(400, f"{key} is required (this server serves {served!r})")
    if model not in accepted_names(served):
        raise RequestError(404, f"model {shown(model)} not found: this server serves only "
                                f"{served!r} (also as {listed_name(served)!r})")
    return model


def chat_messages(value: Any, *, text_parts: bool = False) -> list[dict[str, str]]:
    """Chat messages as `{"role", "content"}` dicts; OpenAI's `developer` role is a system one.

    `text_parts` accepts OpenAI's content lists (`[{"type": "text", "text": ...}]`).
    """
    if not isinstance(value, list) or not value:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise RequestError(400, f"messages[{index}] must be an object, got {shown(message)}")
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ROLES:
            raise RequestError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}; "
                                    f"got {shown(message.get('role'))} (tools are not "
                                    "supported)")
        if message.get("images"):
            raise RequestError(400, f"messages[{index}] has images; this model reads text only")
        content = message.get("content")
        if text_parts and isinstance(content, list):
            content = _text_of_parts(content, index)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RequestError(400, f"messages[{index}].content must be a string, "
                                    f"got {shown(content)}")
        messages.append({"role": role, "content": content})
    return messages


def _text_of_parts(parts: list[Any], index: int) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages[{index}].content: only text parts are "
                                    f"supported, got {shown(part)}")
        texts.append(part["text"])
    return "\n".join(texts)
