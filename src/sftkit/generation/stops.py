"""Stop strings: where a text must end, and how much of its end may still grow into a stop.

One matcher serves both places that stop on text: the token loop (`token_check`: is this row
done?) and the `TextStreamer` (what may be shown yet?).

Example:
    >>> stops = StopStrings(("###", "<|end|>"))
    >>> stops.first("Paris.\\n### Instruction")
    7
    >>> stops.first("Paris.") is None
    True
    >>> stops.pending("Paris.\\n##")  # "##" may still become "###": hold it back
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sftkit.errors import SftkitError

Decode = Callable[[Sequence[int]], str]
TokenCheck = Callable[[int, list[int]], bool]


class StopStrings:
    """A set of stop strings (possibly empty)."""

    def __init__(self, strings: Sequence[str] = ()) -> None:
        self.strings = tuple(strings)

    def __bool__(self) -> bool:
        return bool(self.strings)

    def first(self, text: str) -> int | None:
        """Where the earliest stop string in `text` starts (None when there is none)."""
        cuts = [text.find(stop) for stop in self.strings if stop in text]
        return min(cuts) if cuts else None

    def pending(self, text: str) -> int:
        """The length of the longest end of `text` that could still grow into a stop string.

        >>> StopStrings(("<|end|>",)).pending("Hi <|e"), StopStrings(("<|end|>",)).pending("Hi")
        (3, 0)
        """
        held = 0
        for stop in self.strings:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def token_check(self, decode: Decode | None) -> TokenCheck | None:
        """`check(row, tokens)`: whether the tokens generated so far hold a stop string (None
        without stop strings: nothing to check).

        >>> check = StopStrings(("##",)).token_check(lambda ids: "".join(map(chr, ids)))
        >>> check(0, [ord("a"), ord("#")]), check(0, [ord("a"), ord("#"), ord("#")])
        (False, True)
        """
        if not self.strings:
            return None
        if decode is None:
            raise SftkitError("stop strings need a decode function")
        longest = max(len(stop) for stop in self.strings)

        def stopped(row: int, tokens: list[int]) -> bool:
            # A stop string spans at most `longest` tokens; decode only that tail.
            return self.first(decode(tokens[-(longest + 1):])) is not None

        return stopped
