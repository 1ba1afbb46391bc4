"""A prompt style as its turn layout: the literal text around system, user and assistant turns.

Exported templates (Ollama's Go template, the Jinja `chat_template` of a Hugging Face
directory for a built-in style) are written from this layout, so they render the text
`PromptStyle.render` renders. A built-in style *is* its layout (its class attributes); a
model's own Jinja template (`TemplateStyle`) is probed: rendered around stand-in texts to read
each piece, then the layout is checked to render the template's text on single- and multi-turn
conversations, with and without a system message. A template that does not follow a
per-turn layout (one that changes a turn by its position, say) is an error, not an export that
answers differently from training.

Example:
    >>> from sftkit.tokenizers import smollm2_tokenizer
    >>> from sftkit.data.templates import TemplateStyle
    >>> template = smollm2_tokenizer().chat_template
    >>> layout = turn_layout(TemplateStyle(template.text, template.special_tokens))
    >>> layout.user_format, layout.generation_prompt, layout.end_of_turn
    ('<|im_start|>user\\n{}<|im_end|>\\n', '<|im_start|>assistant\\n', '<|im_end|>\\n')
    >>> default_system_message(layout)
    'You are a helpful AI assistant named SmolLM, trained by Hugging Face'
"""

from __future__ import annotations

import json

from sftkit.data.prompts import PromptStyle
from sftkit.data.templates import TemplateStyle
from sftkit.errors import SftkitError

# Stand-ins rendered to find each piece of a template's text; they occur in no real template.
_SYSTEM = "\x00system\x00"
_USER = ("\x00user-1\x00", "\x00user-2\x00")
_ANSWER = "\x00answer\x00"
CHECK_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is 2 + 2?"},),
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Name a colour."}),
    ({"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Bonjour."}, {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "De rien."}),
)
"""Conversations a probed layout must render exactly as the template does."""


def turn_layout(style: PromptStyle) -> PromptStyle:
    """`style` as a built-in-like style whose class attributes are its layout (a built-in
    style is returned as it is; a `TemplateStyle` is probed and checked, see the module doc)."""
    if not isinstance(style, TemplateStyle):
        return style
    layout = _probe(style)
    for conversation in CHECK_CONVERSATIONS:
        for prompt in (False, True):
            messages = list(conversation)
            if prompt == (messages[-1]["role"] == "assistant"):
                continue  # a generation prompt follows a user turn only
            if layout.render(messages, add_generation_prompt=prompt) != style.render(
                    messages, add_generation_prompt=prompt):
                raise SftkitError(f"chat template of {style.source}: it does not write each "
                                  "turn the same way wherever it comes, so it cannot be "
                                  "exported as a per-turn template")
    return layout


def _probe(style: TemplateStyle) -> PromptStyle:
    def render(*contents: str, system: bool = False, prompt: bool = False) -> str:
        roles = ("user", "assistant") * 2
        messages = [{"role": role, "content": content} for role, content in zip(roles, contents)]
        if system:
            messages.insert(0, {"role": "system", "content": _SYSTEM})
        return style.render(messages, add_generation_prompt=prompt)

    user = render(_USER[0])
    prompted = _after(render(_USER[0], prompt=True), user, style)
    answered = _after(render(_USER[0], _ANSWER), user + prompted + _ANSWER, style)
    second = _after(render(_USER[0], _ANSWER, _USER[1]), user + prompted + _ANSWER + answered,
                    style)
    before_user, _, user_suffix = user.partition(_USER[0])
    next_user = second.partition(_USER[1])[0]
    user_prefix = _common_suffix(before_user, next_user)
    system_text = render(_USER[0], system=True).partition(_USER[0])[0]
    if not system_text.endswith(user_prefix) or system_text.count(_SYSTEM) != 1:
        raise SftkitError(f"chat template of {style.source}: cannot find where it writes the "
                          "system message")
    attributes = {
        "name": style.name, "response_marker": style.response_marker,
        "stop_strings": style.stop_strings,
        "system_format": _format(system_text[:len(system_text) - len(user_prefix)]),
        "default_system": before_user[:len(before_user) - len(user_prefix)],
        "user_format": _format(user_prefix + _USER[0] + user_suffix),
        "generation_prompt": prompted, "end_of_turn": answered,
        "turn_separator": next_user[:len(next_user) - len(user_prefix)],
    }
    return type("TemplateLayout", (PromptStyle,), attributes)()


def _after(text: str, prefix: str, style: TemplateStyle) -> str:
    """What `text` adds to `prefix` (a template whose text of a turn changes once more turns
    follow has no per-turn layout)."""
    if not text.startswith(prefix):
        raise SftkitError(f"chat template of {style.source}: it rewrites earlier turns when a "
                          "turn is added, so it cannot be exported as a per-turn template")
    return text[len(prefix):]


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size:]


def _format(text: str) -> str:
    """`text` with its one stand-in as `{}`, as `PromptStyle`'s `*_format` attributes are."""
    for stand_in in (_SYSTEM, *_USER):
        if stand_in in text:
            before, _, after = text.partition(stand_in)
            return _escape(before) + "{}" + _escape(after)
    raise AssertionError("no stand-in in a probed turn")


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def split_format(format_: str) -> tuple[str, str]:
    """The literal texts before and after the `{}` of a `*_format` attribute.

    Example:
        >>> split_format("<|im_start|>system\\n{}<|im_end|>\\n")
        ('<|im_start|>system\\n', '<|im_end|>\\n')
    """
    marker = "\x00content\x00"
    before, _, after = format_.format(marker).partition(marker)
    return before, after


def default_system_message(layout: PromptStyle) -> str | None:
    """The system message whose text is the layout's default system text (the default
    `SYSTEM` of an Ollama Modelfile); None when the default is not such a message.

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> default_system_message(get_style("alpaca"))[:40]
        'Below is an instruction that describes a'
        >>> default_system_message(get_style("chatml")) is None
        True
    """
    before, after = split_format(layout.system_format)
    text = layout.default_system
    if not text or not text.startswith(before) or not text.endswith(after) \
            or len(text) <= len(before) + len(after):
        return None
    return text[len(before):len(text) - len(after)]


def jinja_template(style: PromptStyle) -> str:
    """A Jinja chat template (as `transformers`' `apply_chat_template` renders it) that writes
    what `style.render` writes: a model's own template as it is, a built-in style from its
    layout.

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> from sftkit.data.templates import render_chat_template
        >>> messages = [{"role": "user", "content": "Hi"}]
        >>> style = get_style("phi3")
        >>> render_chat_template(jinja_template(style), messages, add_generation_prompt=True) \\
        ...     == style.render(messages, add_generation_prompt=True)
        True
    """
    if isinstance(style, TemplateStyle):
        return style.template
    system_before, system_after = split_format(style.system_format)
    user_before, user_after = split_format(style.user_format)
    content = "message['content']"
    return "".join((
        "{% if messages and messages[0]['role'] == 'system' %}",
        _jinja(system_before), "{{ messages[0]['content'] }}", _jinja(system_after),
        "{% else %}", _jinja(style.default_system), "{% endif %}",
        "{% for message in messages %}",
        "{% if message['role'] == 'user' %}",
        _jinja(user_before), "{{ ", content, " }}", _jinja(user_after),
        "{% elif message['role'] == 'assistant' %}",
        _jinja(style.generation_prompt), "{{ ", content, " }}", _jinja(style.end_of_turn),
        "{% if not loop.last %}", _jinja(style.turn_separator), "{% endif %}",
        "{% endif %}{% endfor %}",
        "{% if add_generation_prompt %}", _jinja(style.generation_prompt), "{% endif %}",
    ))


def _jinja(text: str) -> str:
    """`text` as a Jinja expression (a quoted string: no raw newline for `trim_blocks` to
    eat, no `{{` to parse)."""
    return "{{ " + json.dumps(text) + " }}" if text else ""

