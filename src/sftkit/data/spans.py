"""Which tokens of a rendered conversation are learned, found from token offsets.

The learned text of an assistant turn i is found with the style's prefix property, not with
string markers, so it is right for any style or chat template:

    start = len(render(messages[:i], add_generation_prompt=True))   # where the answer starts
    end   = len(render(messages[:i + 1]))                            # after its end-of-turn

and each must be a prefix of the next (else a `SftkitError` names the turn). The answer's
content and its end-of-turn text are learned: the model learns to stop.

Tokens to characters: the tokenizer's offsets tile the text (`encode_with_offsets`). The rule
for a token straddling a span boundary: **a token is learned when any character of it lies in
a learned span**, so a token merging the last prompt character with the first answer
character (or the end-of-turn with what follows) is learned whole. A token holding only the
tail bytes of a character split over several tokens (an empty offset) follows the token before.

Example:
    >>> from sftkit.data.prompts import get_style
    >>> text, spans = learned_char_spans(
    ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    ...     get_style("chatml"), "assistant")
    >>> [text[start:end] for start, end in spans]
    ['Yo<|im_end|>\\n']
    >>> learned_token_flags([(0, 2), (2, 3), (3, 5), (5, 5), (5, 6)], [(2, 5)])
    [False, True, True, True, False]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sftkit.config import LOSS_ON
from sftkit.errors import SftkitError

Span = tuple[int, int]


class RendersConversations(Protocol):
    """The render contract a style (built-in or a model's chat template) follows."""

    @property
    def name(self) -> str: ...

    def render(self, messages: Sequence[Mapping[str, str]], *,
               add_generation_prompt: bool = False) -> str: ...


def learned_char_spans(messages: Sequence[Mapping[str, str]], style: RendersConversations,
                       loss_on: str) -> tuple[str, list[Span]]:
    """The rendered text and the character spans learned under `loss_on` (`all`: the whole
    text; `assistant`: every assistant turn; `last_assistant`: the final one)."""
    if loss_on not in LOSS_ON:
        raise SftkitError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    text = style.render(messages)
    if loss_on == "all":
        return text, [(0, len(text))]
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if loss_on == "last_assistant":
        turns = turns[-1:]
    return text, [_turn_span(messages, style, text, i) for i in turns]


def _turn_span(messages: Sequence[Mapping[str, str]], style: RendersConversations, text: str,
               turn: int) -> Span:
    prompt = style.render(messages[:turn], add_generation_prompt=True)
    upto = style.render(messages[:turn + 1])
    if not upto.startswith(prompt) or not text.startswith(upto):
        raise SftkitError(
            f"prompt style {style.name!r}: the text up to assistant message {turn} is not a "
            "prefix of the whole conversation's text, so the learned tokens cannot be found "
            "(the template renders earlier turns differently once later ones follow)")
    return len(prompt), len(upto)


def learned_token_flags(offsets: Sequence[Span], spans: Sequence[Span]) -> list[bool]:
    """For each token (its tiling character offsets), whether it is learned (see the module
    doc for the boundary rule)."""
    flags: list[bool] = []
    for start, end in offsets:
        if start == end:
            flags.append(bool(flags) and flags[-1])
        else:
            flags.append(any(start < span_end and end > span_start
                             for span_start, span_end in spans))
    return flags
