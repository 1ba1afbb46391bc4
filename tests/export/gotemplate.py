"""A faithful renderer for the subset of Go's text/template that sftkit's Ollama templates use
(test-only code): text; `{{ pipeline }}`; `if` / `else if` / `else` / `end`;
`range $i, $x := pipeline` / `range pipeline`; `$var := pipeline`; trim markers `{{-` and
`-}}`; operands `.`, `.Field`, `$`, `$.Field`, `$var`, `$var.Field`, quoted strings, integers and
parenthesised pipelines; the builtins `eq`, `ne`, `and`, `or`, `not`, `len`, `slice`, `index`.

Anything else — an unknown function, a field the data lacks, an unclosed block — is an error, as
in Go, so a typo in a template fails the test that renders it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class TemplateError(Exception):
    pass


@dataclass
class Node:
    kind: str  # text | print | assign | if | range
    text: str = ""
    expr: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    branches: list[tuple[list[Any] | None, list[Node]]] = field(default_factory=list)


def render(template: str, data: dict[str, Any]) -> str:
    """The text `template` writes for `data` (Ollama's values: System, Messages, ...)."""
    nodes, _ = _parse(_pieces(template), 0, top=True)
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def _pieces(template: str) -> list[tuple[str, str]]:
    """("text", ...) and ("action", ...) pieces, the trim markers applied."""
    pieces: list[tuple[str, str]] = []
    position = 0
    while True:
        start = template.find("{{", position)
        if start < 0:
            pieces.append(("text", template[position:]))
            break
        pieces.append(("text", template[position:start]))
        end = _action_end(template, start + 2)
        action = template[start + 2:end]
        if action.startswith("- "):
            pieces[-1] = ("text", pieces[-1][1].rstrip())
            action = action[2:]
        trim_after = action.endswith(" -")
        action = action[:-2] if trim_after else action
        pieces.append(("action", action.strip()))
        position = end + 2
        if trim_after:
            while position < len(template) and template[position].isspace():
                position += 1
    return pieces


def _action_end(template: str, position: int) -> int:
    quoted = False
    while position < len(template):
        char = template[position]
        if quoted and char == "\\":
            position += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and template.startswith("}}", position):
            return position
        position += 1
    raise TemplateError("unclosed action")


_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|,|-?\d+|\$?[\w]*(?:\.\w+)*|\.)')


def _tokens(action: str) -> list[str]:
    tokens, position = [], 0
    while position < len(action):
        match = _TOKEN.match(action, position)
        if match is None or match.end() == position:
            if action[position:].strip() == "":
                break
            raise TemplateError(f"cannot read {action[position:]!r}")
        tokens.append(match.group(1))
        position = match.end()
    return [token for token in tokens if token]


def _parse(pieces: list[tuple[str, str]], index: int, top: bool = False):
    """Nodes until an `else`/`end` (returned with its index), or the end at the top level."""
    nodes: list[Node] = []
    while index < len(pieces):
        kind, value = pieces[index]
        index += 1
        if kind == "text":
            if value:
                nodes.append(Node("text", text=value))
            continue
        tokens = _tokens(value)
        head = tokens[0] if tokens else ""
        if head in ("end", "else"):
            if top:
                raise TemplateError(f"unexpected {{{{ {value} }}}}")
            return nodes, (index, tokens)
        if head == "if":
            node, index = _parse_if(pieces, index, tokens[1:])
            nodes.append(node)
        elif head == "range":
            nodes.append(_parse_range(pieces, index, tokens[1:]))
            index = nodes[-1].text  # type: ignore[assignment]
            nodes[-1].text = ""
        elif len(tokens) > 2 and tokens[1] == ":=":
            nodes.append(Node("assign", names=[tokens[0]], expr=_expression(tokens[2:])))
        else:
            nodes.append(Node("print", expr=_expression(tokens)))
    if not top:
        raise TemplateError("missing {{ end }}")
    return nodes, None


def _parse_if(pieces, index, condition):
    node = Node("if")
    while True:
        body, (index, closing) = _parse(pieces, index)
        node.branches.append((_expression(condition) if condition is not None else None, body))
        if closing[0] == "end":
            return node, index
        if len(closing) > 1 and closing[1] == "if":
            condition = closing[2:]
        elif len(closing) == 1:
            condition = None
        else:
            raise TemplateError(f"bad else: {closing}")


def _parse_range(pieces, index, tokens):
    names: list[str] = []
    if ":=" in tokens:
        at = tokens.index(":=")
        names = [token for token in tokens[:at] if token != ","]
        tokens = tokens[at + 1:]
    body, (index, closing) = _parse(pieces, index)
    if closing[0] != "end":
        raise TemplateError("range with else is not in the subset")
    node = Node("range", names=names, expr=_expression(tokens), body=body)
    node.text = index  # the caller's next index
    return node


def _expression(tokens: list[str]) -> list[Any]:
    """A command: a list of operands (nested lists for parentheses)."""
    stack: list[list[Any]] = [[]]
    for token in tokens:
        if token == "(":
            stack.append([])
        elif token == ")":
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(token)
    if len(stack) != 1 or not stack[0]:
        raise TemplateError(f"bad expression {tokens}")
    return stack[0]


FUNCTIONS = {
    "eq": lambda first, *others: any(first == other for other in others),
    "ne": lambda a, b: a != b,
    "not": lambda value: not _truth(value),
    "len": len,
    "index": lambda value, *keys: _index(value, keys),
    "slice": lambda value, start=0, end=None: value[start:end],
}


def _index(value, keys):
    for key in keys:
        value = value[key]
    return value


def _truth(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (hasattr(value, "__len__")
                                                      and len(value) == 0)


def _evaluate(command: list[Any], dot: Any, scopes: list[dict[str, Any]]) -> Any:
    head = command[0]
    if isinstance(head, str) and head in ("and", "or"):
        value = None
        for operand in command[1:]:
            value = _operand(operand, dot, scopes)
            if _truth(value) == (head == "or"):
                return value
        return value
    if isinstance(head, str) and head in FUNCTIONS:
        arguments = [_operand(operand, dot, scopes) for operand in command[1:]]
        return FUNCTIONS[head](*arguments)
    if len(command) != 1:
        raise TemplateError(f"{head!r} is not a function")
    return _operand(head, dot, scopes)


def _operand(token: Any, dot: Any, scopes: list[dict[str, Any]]) -> Any:
    if isinstance(token, list):
        return _evaluate(token, dot, scopes)
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token == ".":
        return dot
    if token.startswith("$"):
        name, _, path = token.partition(".")
        for scope in reversed(scopes):
            if name in scope:
                return _fields(scope[name], path, token)
        raise TemplateError(f"undefined variable {name}")
    if token.startswith("."):
        return _fields(dot, token[1:], token)
    raise TemplateError(f"unknown function or operand {token!r}")


def _fields(value: Any, path: str, token: str) -> Any:
    for name in filter(None, path.split(".")):
        if not isinstance(value, dict) or name not in value:
            raise TemplateError(f"can't evaluate field {name} in {token}")
        value = value[name]
    return value


def _print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _run(nodes: list[Node], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "print":
            out.append(_print(_evaluate(node.expr, dot, scopes)))
        elif node.kind == "assign":
            scopes[-1][node.names[0]] = _evaluate(node.expr, dot, scopes)
        elif node.kind == "if":
            for condition, body in node.branches:
                if condition is None or _truth(_evaluate(condition, dot, scopes)):
                    _run(body, dot, [*scopes, {}], out)
                    break
        else:
            items = _evaluate(node.expr, dot, scopes)
            for position, item in enumerate(items):
                scope = dict(zip(node.names, (position, item)[-len(node.names):])) \
                    if len(node.names) == 2 else dict.fromkeys(node.names, item)
                _run(node.body, item, [*scopes, scope], out)
