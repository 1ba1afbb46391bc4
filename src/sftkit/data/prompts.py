"""Prompt styles: how a record becomes a prompt, and how a response is cut out of generated text.

Each style is a small class looked up by name. `format_prompt` returns everything the model sees
before its answer, *including* the response prefix, so `format_prompt(r) + r["output"]` is the
full training text (the book's `format_input(entry) + "\\n\\n### Response:\\n" + output`).

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

from sftkit.errors import SftkitError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
END_OF_TEXT = "<|endoftext|>"


class PromptStyle:
    """The base: subclasses set the class attributes and implement `format_prompt`."""

    name: ClassVar[str]
    #: The text right before the answer; without the prompt, the answer starts after it.
    response_marker: ClassVar[str]
    #: Strings that end an answer when the model runs past its end-of-text token.
    stop_strings: ClassVar[tuple[str, ...]]
    #: What follows an assistant turn before the next user turn, in a conversation.
    turn_separator: ClassVar[str] = "\n"

    def format_prompt(self, record: Mapping[str, Any], previous: str = "") -> str:
        """The prompt for `record`; `previous` is the conversation so far, if any."""
        raise NotImplementedError

    def format_conversation(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A chat (`[{"role": "user"|"assistant"|"system", "content": ...}, ...]`, ending with
        a user turn) as one prompt; a single user turn equals `format_prompt` of it."""
        turns = _checked_turns(messages)
        text = ""
        for user, assistant in turns[:-1]:
            text = self.format_prompt({"instruction": user, "input": ""}, previous=text) \
                + assistant + self.turn_separator
        return self.format_prompt({"instruction": turns[-1][0], "input": ""}, previous=text)

    def format_example(self, record: Mapping[str, Any]) -> str:
        """The full training text: prompt, then the reference output."""
        return self.format_prompt(record) + record["output"]

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
    """The reference style (step 7.2), text for text."""

    name = "alpaca"
    response_marker = "\n\n### Response:\n"
    stop_strings = ("\n\n### Instruction:", "\n\n### Input:", "\n\n### Response:")
    turn_separator = ""

    def format_prompt(self, record: Mapping[str, Any], previous: str = "") -> str:
        text = (previous or ALPACA_PREAMBLE) + f"\n\n### Instruction:\n{record['instruction']}"
        if record.get("input"):
            text += f"\n\n### Input:\n{record['input']}"
        return text + self.response_marker


class Phi3(PromptStyle):
    """The Phi-3 style of the book's exercise 7.1."""

    name = "phi3"
    response_marker = "\n<|assistant|>:\n"
    stop_strings = ("<|user|>", "<|end|>", "\n<|assistant|>")

    def format_prompt(self, record: Mapping[str, Any], previous: str = "") -> str:
        text = f"{previous}<|user|>\n{record['instruction']}"
        if record.get("input"):
            text += f"\n{record['input']}"
        return text + self.response_marker


class ChatML(PromptStyle):
    """ChatML, the chat format of SmolLM2-Instruct and many others (no system turn)."""

    name = "chatml"
    response_marker = "<|im_end|>\n<|im_start|>assistant\n"
    stop_strings = ("<|im_end|>", "<|im_start|>")
    turn_separator = "<|im_end|>\n"

    def format_conversation(self, messages: Sequence[Mapping[str, str]]) -> str:
        system = "".join(f"<|im_start|>system\n{m['content']}<|im_end|>\n"
                         for m in messages if m.get("role") == "system")
        return system + super().format_conversation(messages)

    def format_prompt(self, record: Mapping[str, Any], previous: str = "") -> str:
        text = f"{previous}<|im_start|>user\n{record['instruction']}"
        if record.get("input"):
            text += f"\n\n{record['input']}"
        return text + self.response_marker


def _checked_turns(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(user, assistant) pairs; the last pair's assistant part is empty. System messages are
    skipped here (the styles that have a system turn add it themselves)."""
    turns: list[tuple[str, str]] = []
    expected = "user"
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role == "system":
            continue
        if role != expected or not isinstance(content, str):
            raise SftkitError(f"message {index}: expected a {expected} message with string "
                              f"content, got role {role!r}")
        if role == "user":
            turns.append((content, ""))
        else:
            turns[-1] = (turns[-1][0], content)
        expected = "assistant" if role == "user" else "user"
    if expected != "assistant":
        raise SftkitError("a conversation must end with a user message")
    return turns


STYLES: dict[str, type[PromptStyle]] = {style.name: style for style in (Alpaca, Phi3, ChatML)}


def get_style(name: str) -> PromptStyle:
    """A prompt style by name: `alpaca`, `phi3` or `chatml`."""
    try:
        return STYLES[name]()
    except KeyError:
        raise SftkitError(
            f"unknown prompt style {name!r}; known: {', '.join(sorted(STYLES))}"
        ) from None
