"""Printable text from generated tokens, for chat, `generate --prompt` and the server."""

from __future__ import annotations

from collections.abc import Sequence

from sftkit.generation.stops import Decode, StopStrings


class TextStreamer:
    """Turns generated tokens into printable text increments: holds back incomplete UTF-8
    characters and anything that may be the start of a stop string, and ends at a stop string.

    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> tok = gpt2_tokenizer()
    >>> streamer = TextStreamer(tok.decode, stop_strings=("###",))
    >>> "".join(streamer.feed(t) for t in tok.encode("Hi there ### more"))
    'Hi there '
    >>> streamer.stopped
    True
    """

    def __init__(self, decode: Decode, stop_strings: Sequence[str] = ()):
        self.decode = decode
        self.stops = StopStrings(stop_strings)
        self.tokens: list[int] = []
        self.emitted = ""
        self.stopped = False

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.stops.strings

    @property
    def text(self) -> str:
        """Everything shown so far (the final answer once generation ends)."""
        return self.emitted

    def feed(self, token: int) -> str:
        """The new text to show after `token` ("" while held back or after a stop)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        cut = self.stops.first(text)
        if cut is not None:
            self.stopped = True
            return self._emit(text[:cut])
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 character decodes as U+FFFD
        return self._emit(text[:min(safe, len(text) - self.stops.pending(text))])

    def flush(self) -> str:
        """Whatever was held back, once generation has ended without a stop string."""
        if self.stopped:
            return ""
        return self._emit(self.decode(self.tokens))

    def _emit(self, visible: str) -> str:
        if len(visible) <= len(self.emitted):
            return ""
        new = visible[len(self.emitted):]
        self.emitted = visible
        return new
