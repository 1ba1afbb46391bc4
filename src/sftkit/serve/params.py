"""Request parsing shared by both APIs: JSON bodies, typed fields, model names, messages.

Every check raises `RequestError` with the status and a message naming the field at fault, so
clients see `{"error": "options.temperature must be a number, got 'hot'"}` rather than a 500.

Example:
    >>> number({"temperature": 0.7}, "temperature", minimum=0)
    0.7
    >>> integer({"num_predict": "5"}, "num_predict", where="options.")
    Traceback (most recent call last):
    ...
    sftkit.serve.engine.RequestError: options.num_predict must be an integer, got '5'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sftkit.serve.engine import RequestError

ROLES = ("system", "user", "assistant")
SEED_RANGE = 2**63  # torch.Generator.manual_seed takes a 64-bit integer


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return data


def integer(data: Mapping[str, Any], key: str, *, minimum: int | None = None,
            maximum: int | None = None, where: str = "") -> int | None:
    """`data[key]` as an int (None when absent or null); 2.0 counts as 2, True does not."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{where}{key} must be an integer, got {value!r}")
    _check_range(value, minimum, maximum, f"{where}{key}")
    return value


def number(data: Mapping[str, Any], key: str, *, minimum: float | None = None,
           maximum: float | None = None, where: str = "") -> float | None:
    """`data[key]` as a float (None when absent or null)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(400, f"{where}{key} must be a number, got {value!r}")
    _check_range(value, minimum, maximum, f"{where}{key}")
    return float(value)


def _check_range(value: float, minimum: float | None, maximum: float | None, name: str) -> None:
    if minimum is not None and value < minimum:
        raise RequestError(400, f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise RequestError(400, f"{name} must be at most {maximum}, got {value}")


def string(data: Mapping[str, Any], key: str, *, where: str = "") -> str | None:
    """`data[key]` as a str (None when absent or null)."""
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f"{where}{key} must be a string, got {value!r}")
    return value


def boolean(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(400, f"{key} must be true or false, got {value!r}")
    return value


def stop_strings(value: Any, *, where: str = "") -> tuple[str, ...]:
    """A stop string or a list of them; empty strings are dropped (they would stop at once)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(stop, str) for stop in value):
        raise RequestError(400, f"{where}stop must be a string or a list of strings, "
                                f"got {value!r}")
    return tuple(stop for stop in value if stop)


def seed(data: Mapping[str, Any], key: str = "seed", *, where: str = "") -> int | None:
    """A seed; a negative one means "random" as in Ollama."""
    value = integer(data, key, where=where)
    if value is None or value < 0:
        return None
    if value >= SEED_RANGE:
        raise RequestError(400, f"{where}{key} must be below 2**63, got {value}")
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
    if not isinstance(model, str) or not model.strip():
        raise RequestError(400, f"{key} is required (this server serves {served!r})")
    if model not in accepted_names(served):
        raise RequestError(404, f"model {model!r} not found: this server serves only "
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
            raise RequestError(400, f"messages[{index}] must be an object, got {message!r}")
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ROLES:
            raise RequestError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}; "
                                    f"got {message.get('role')!r} (tools are not supported)")
        if message.get("images"):
            raise RequestError(400, f"messages[{index}] has images; this model reads text only")
        content = message.get("content")
        if text_parts and isinstance(content, list):
            content = _text_of_parts(content, index)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RequestError(400, f"messages[{index}].content must be a string, "
                                    f"got {content!r}")
        messages.append({"role": role, "content": content})
    return messages


def _text_of_parts(parts: list[Any], index: int) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages[{index}].content: only text parts are "
                                    f"supported, got {part!r}")
        texts.append(part["text"])
    return "\n".join(texts)
