"""Prompt styles: how a record becomes a prompt, and how a response is cut out of generated text.

Each style is a small class looked up by name. `render` turns a conversation into text (the
contract every style, built-in or a model's template, follows); `format_prompt` returns
everything the model sees before a record's answer, *including* the response prefix, and
`format_example` the full training text. For Alpaca that is the book's text, character for
character (`format_input(entry) + "\\n\\n### Response:\\n" + output`).

Example:
    >>> style = get_style("alpaca")
    >>> prompt = style.format_prompt({"instruction": "Convert 45 km to m.", "input": ""})
    >>> prompt.startswith("Below is an instruction that describes a task.")
    True
    >>> print(prompt[prompt.index("###"):])
    ### Instruction:
    Convert 45 km to m.
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
    >>> style.extract_response("### Response:\\n45 kilometers is 45000 meters.<|endoftext|>")
    '45 kilometers is 45000 meters.'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sftkit.data.formats import record_messages
from sftkit.errors import SftkitError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
END_OF_TEXT = "<|endoftext|>"


class PromptStyle:
    """The base: subclasses set the class attributes; `render` is the one place text is made.

    A conversation is rendered as: the system text (the system message, else the style's
    default), then for each user message `user_format`, and for each assistant message the
    `generation_prompt`, its content and the `end_of_turn` text; `turn_separator` comes between
    an answer and the next user message.
    """

    name: ClassVar[str]
    #: The text right before the answer; without the prompt, the answer starts after it.
    response_marker: ClassVar[str]
    #: Strings that end an answer when the model runs past its end-of-text token.
    stop_strings: ClassVar[tuple[str, ...]]
    #: How a system message is written (`{}` = its content), and the one used when none is given.
    system_format: ClassVar[str] = ""
    default_system: ClassVar[str] = ""
    user_format: ClassVar[str]
    #: Where the assistant's answer starts (`render(..., add_generation_prompt=True)` ends so).
    generation_prompt: ClassVar[str]
    #: What follows each assistant answer (learned with it: the model learns to stop).
    end_of_turn: ClassVar[str] = ""
    #: What comes between an assistant answer and the next user message.
    turn_separator: ClassVar[str] = ""
    #: How an Alpaca record's input follows its instruction in the user message.
    input_separator: ClassVar[str] = "\n\n"

    def render(self, messages: Sequence[Mapping[str, str]], *,
               add_generation_prompt: bool = False) -> str:
        """The text of a conversation (`[{"role": ..., "content": ...}, ...]`, an optional
        system message first, then user and assistant in turn). Ending with an assistant
        message, the text ends with its content and `end_of_turn`; with
        `add_generation_prompt` (ending with a user message) it ends where the answer starts.

        >>> get_style("chatml").render([{"role": "user", "content": "Hi"},
        ...                             {"role": "assistant", "content": "Hello."}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>\\n'
        """
        _check_roles(messages, add_generation_prompt)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" \
            else None
        text = self.system_format.format(system) if system is not None else self.default_system
        previous = None
        for message in messages[1 if system is not None else 0:]:
            if message["role"] == "user":
                text += (self.turn_separator if previous == "assistant" else "") \
                    + self.user_format.format(message["content"])
            else:
                text += self.generation_prompt + message["content"] + self.end_of_turn
            previous = message["role"]
        return text + (self.generation_prompt if add_generation_prompt else "")

    def record_messages(self, record: Mapping[str, Any]) -> list[dict[str, str]]:
        """A record (any format) as a conversation, an Alpaca input joined this style's way."""
        return record_messages(record, self.input_separator)

    def format_prompt(self, record: Mapping[str, Any]) -> str:
        """Everything the model sees before a record's answer, the response prefix included."""
        return self.render(self.record_messages(record)[:-1], add_generation_prompt=True)

    def format_conversation(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A chat ending with a user turn, as one prompt; a single user turn equals
        `format_prompt` of it."""
        return self.render(messages, add_generation_prompt=True)

    def format_example(self, record: Mapping[str, Any]) -> str:
        """The full training text: prompt, then the reference output and `end_of_turn`."""
        return self.render(self.record_messages(record))

    def extract_response(self, generated: str, prompt: str | None = None) -> str:
        """The answer alone: no prompt echo, no response marker, nothing after a stop string."""
        if prompt is not None and generated.startswith(prompt):
            text = generated[len(prompt):]
        else:
            marker = self.response_marker.strip()
            marker_at = generated.find(marker)
            text = generated[marker_at + len(marker):] if marker_at >= 0 else generated
        for stop in (*self.stop_strings, END_OF_TEXT):
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text.strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Alpaca(PromptStyle):
    """The reference style (step 7.2), text for text; a system message replaces the preamble."""

    name = "alpaca"
    response_marker = "\n\n### Response:\n"
    stop_strings = ("\n\n### Instruction:", "\n\n### Input:", "\n\n### Response:")
    system_format = "{}"
    default_system = ALPACA_PREAMBLE
    user_format = "\n\n### Instruction:\n{}"
    generation_prompt = response_marker
    input_separator = "\n\n### Input:\n"


class Phi3(PromptStyle):
    """The Phi-3 style of the book's exercise 7.1."""

    name = "phi3"
    response_marker = "\n<|assistant|>:\n"
    stop_strings = ("<|user|>", "<|end|>", "\n<|assistant|>")
    system_format = "<|system|>\n{}\n"
    user_format = "<|user|>\n{}"
    generation_prompt = response_marker
    turn_separator = "\n"
    input_separator = "\n"


class ChatML(PromptStyle):
    """ChatML, the chat format of SmolLM2-Instruct and many others."""

    name = "chatml"
    response_marker = "<|im_end|>\n<|im_start|>assistant\n"
    stop_strings = ("<|im_end|>", "<|im_start|>")
    system_format = "<|im_start|>system\n{}<|im_end|>\n"
    user_format = "<|im_start|>user\n{}<|im_end|>\n"
    generation_prompt = "<|im_start|>assistant\n"
    end_of_turn = "<|im_end|>\n"


def _check_roles(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> None:
    """A system message only first, then user and assistant in turn; a generation prompt
    follows a user message."""
    expected = "user"
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if index == 0 and role == "system" and isinstance(content, str):
            continue
        if role != expected or not isinstance(content, str):
            raise SftkitError(f"message {index}: expected a {expected} message with string "
                              f"content, got role {role!r}")
        expected = "assistant" if role == "user" else "user"
    if add_generation_prompt and expected != "assistant":
        raise SftkitError("a conversation must end with a user message")


STYLES: dict[str, type[PromptStyle]] = {style.name: style for style in (Alpaca, Phi3, ChatML)}


def get_style(name: str) -> PromptStyle:
    """A prompt style by name: `alpaca`, `phi3` or `chatml`."""
    try:
        return STYLES[name]()
    except KeyError:
        raise SftkitError(
            f"unknown prompt style {name!r}; known: {', '.join(sorted(STYLES))}"
        ) from None
