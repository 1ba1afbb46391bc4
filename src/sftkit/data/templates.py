"""A model's own chat template (Jinja), rendered the way `transformers`' `apply_chat_template`
renders it, and `TemplateStyle`, the prompt style built on it.

Templates come from the Hub, so they are untrusted code: they run in jinja2's immutable
sandbox with the environment `transformers` uses (`trim_blocks`, `lstrip_blocks`, the
`loopcontrols` extension, `{% generation %}` blocks accepted) and the same helpers
(`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML, `dict`, a `namespace`
that refuses underscore names). The template sees `messages`, `add_generation_prompt`,
`tools=None`, `documents=None` and the tokenizer's special tokens (`bos_token`, `eos_token`,
...), as in `transformers`.

Example:
    >>> template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    ...             "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    >>> style = TemplateStyle(template, {"eos_token": "</s>"}, source="a tiny template")
    >>> style.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    '<|user|>Hi</s><|assistant|>'
    >>> style.stop_strings, style.response_marker
    (('</s>',), '</s><|assistant|>')
    >>> style.format_example({"instruction": "Hi", "input": "", "output": "Hello"})
    '<|user|>Hi</s><|assistant|>Hello</s>'
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sftkit.data.prompts import STYLES, PromptStyle
from sftkit.errors import SftkitError

TEMPLATE_STYLE = "template"
"""The style name that stands for the model's own chat template."""
STYLE_NAMES = (*sorted(STYLES), TEMPLATE_STYLE)
# Stand-ins rendered to learn where a template puts an answer and what follows it.
_PROBE_USER = "\x00sftkit-user\x00"
_PROBE_ANSWER = "\x00sftkit-answer\x00"


def check_style_name(name: str) -> str:
    """`name` if it names a prompt style (a built-in one or `template`), else an error.

    Example:
        >>> check_style_name("template")
        'template'
        >>> check_style_name("vicuna")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: unknown prompt style 'vicuna'; known: alpaca, ..., template
    """
    if name not in STYLE_NAMES:
        raise SftkitError(f"unknown prompt style {name!r}; known: {', '.join(STYLE_NAMES)}")
    return name


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool = False,
                         special_tokens: Mapping[str, Any] | None = None,
                         source: str = "chat template") -> str:
    """`template` rendered for `messages`, exactly as `apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...)` renders it; errors name `source`.

    Example:
        >>> render_chat_template("{{ bos_token }}{{ messages[0]['content'] | tojson }}",
        ...                      [{"role": "user", "content": "<b>é</b>"}],
        ...                      special_tokens={"bos_token": "<s>"})
        '<s>"<b>é</b>"'
        >>> render_chat_template("{{ raise_exception('roles must alternate') }}", [],
        ...                      source="model.gguf")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: chat template of model.gguf: roles must alternate
    """
    import jinja2

    compiled = _compile(template, source)
    # Plain copies: the template sees data, never the caller's objects (the sandbox's rule).
    variables = {**{key: _plain(value) for key, value in (special_tokens or {}).items()},
                 "messages": [_plain(message) for message in messages],
                 "tools": None, "documents": None,
                 "add_generation_prompt": add_generation_prompt}
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as error:
        raise SftkitError(f"chat template of {source}: {error.message}") from None


class TemplateStyle(PromptStyle):
    """The prompt style of a model's own Jinja chat template (`special_tokens`: `bos_token`,
    `eos_token`, ... as the tokenizer names them; `source`: where the template came from).

    It implements the render contract of every style: `render(messages,
    add_generation_prompt=...)`. An Alpaca-like record is one user turn (instruction, then
    input after a blank line). `stop_strings` are what the template writes after an answer
    (stripped of whitespace) and the eos token; `sha256` identifies the template text.

    Example:
        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> template = smollm2_tokenizer().chat_template
        >>> style = TemplateStyle(template.text, template.special_tokens, template.source)
        >>> print(style.format_conversation([{"role": "user", "content": "hi"}]))
        <|im_start|>system
        You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
        <|im_start|>user
        hi<|im_end|>
        <|im_start|>assistant
        <BLANKLINE>
        >>> style.stop_strings
        ('<|im_end|>',)
    """

    name = TEMPLATE_STYLE

    def __init__(self, template: str, special_tokens: Mapping[str, Any] | None = None,
                 source: str = "chat template"):
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self.source = source
        self.sha256 = hashlib.sha256(template.encode("utf-8")).hexdigest()
        _compile(template, source)  # a syntax error shows now, not at the first request
        self.response_marker = self._generation_prompt()  # type: ignore[misc]
        self.stop_strings = self._end_of_turn_strings()  # type: ignore[misc]

    def render(self, messages: Sequence[Mapping[str, str]], *,
               add_generation_prompt: bool = False) -> str:
        """The conversation's text in this template (the render contract)."""
        return render_chat_template(self.template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.special_tokens, source=self.source)

    def format_conversation(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.render(messages, add_generation_prompt=True)

    def _generation_prompt(self) -> str:
        """What follows a user's words up to where the answer starts (like the built-in
        styles' `response_marker`, the end of the user's turn included)."""
        try:
            prompt = self.render([{"role": "user", "content": _PROBE_USER}],
                                 add_generation_prompt=True)
        except SftkitError:
            return ""
        return prompt.partition(_PROBE_USER)[2]

    def _end_of_turn_strings(self) -> tuple[str, ...]:
        """What the template writes right after an answer, and the eos token."""
        conversation = [{"role": "user", "content": _PROBE_USER},
                        {"role": "assistant", "content": _PROBE_ANSWER}]
        try:
            after = self.render(conversation).partition(_PROBE_ANSWER)[2].split()
        except SftkitError:
            after = []
        # The first piece: Phi-3 writes "<|end|>\n<|endoftext|>" after a last answer, but only
        # "<|end|>" between turns, which is where a model stops.
        end_of_turn = after[0] if after else ""
        eos = str(self.special_tokens.get("eos_token", ""))
        return tuple(stop for stop in dict.fromkeys((end_of_turn, eos)) if stop)

    def __repr__(self) -> str:
        return f"TemplateStyle(source={self.source!r}, sha256={self.sha256[:12]})"


def _plain(value: Any) -> Any:
    """`value` rebuilt from plain JSON types (anything else becomes its type's name)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return f"<{type(value).__name__}>"


@functools.lru_cache(maxsize=32)
def _compile(template: str, source: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise SftkitError(f"chat template of {source}: line {error.lineno}: "
                          f"{error.message}") from None


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandbox and helpers `transformers` renders chat templates with."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` renders its body (transformers marks
        assistant text with it; sftkit finds learned spans from token offsets instead)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body) \
                .set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                               dict=_TemplateDict(), namespace=_namespace_class())
    return environment


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want the JSON itself.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.TemplateError(message)


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, and nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _namespace_class() -> type:
    """jinja2's `namespace`, refusing underscore-prefixed names (no way to CPython internals)."""
    import jinja2
    from jinja2.utils import Namespace

    def checked(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template cannot store {name!r} (underscore names) on a namespace")

    class TemplateNamespace(Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja2's own signature)
            self, attributes = args[0], dict(*args[1:], **kwargs)
            for name in attributes:
                checked(name)
            Namespace.__init__(self, attributes)

        def __setitem__(self, name: str, value: Any) -> None:
            checked(name)
            Namespace.__setitem__(self, name, value)

    return TemplateNamespace
