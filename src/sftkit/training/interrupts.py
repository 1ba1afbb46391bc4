"""Ctrl-C between training steps, never inside one.

An optimizer step that is cut short can leave the weights half-updated (the in-backward AdamW
updates each parameter during the backward pass), and a checkpoint of them would apply part of
the step twice on resume. So while a step runs, the first Ctrl-C (SIGINT) is only noted, and
raised as `KeyboardInterrupt` once the step is complete; a second Ctrl-C raises at once, for a
user who will not wait (the trainer then knows the step is torn and saves nothing).

Example:
    >>> import os, signal
    >>> done = []
    >>> try:
    ...     with deferred_interrupts():
    ...         os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the step
    ...         done.append("the rest of the step")
    ... except KeyboardInterrupt:
    ...     done.append("interrupted after it")
    >>> done
    ['the rest of the step', 'interrupted after it']
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold a SIGINT back until the block is done, then raise `KeyboardInterrupt`.

    Only the main thread can handle signals, and only a handler set from Python can be put
    back; elsewhere the block runs unprotected.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is None):
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        if pending:  # the second Ctrl-C: the user insists
            raise KeyboardInterrupt
        pending.append(signum)
        print("\nfinishing the training step, then stopping (Ctrl-C again to stop at once, "
              "losing the step)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
