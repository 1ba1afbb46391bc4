"""Ctrl-C (or SIGTERM) between training steps, never inside one.

An optimizer step that is cut short can leave the weights half-updated (the in-backward AdamW
updates each parameter during the backward pass), and a checkpoint of them would apply part of
the step twice on resume. So while a step runs, the first Ctrl-C (SIGINT) or SIGTERM (a
scheduler's, or torchrun's to its workers) is only noted, and raised as `KeyboardInterrupt`
once the step is complete; a second Ctrl-C raises at once, for a user who will not wait (the
trainer then knows the step is torn and saves nothing). On several processes the ranks first
agree (`agree`): a rank that was not signalled stops after the same step as those that were,
so that all of them save one checkpoint together.

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
from collections.abc import Callable, Iterator
from types import FrameType


@contextlib.contextmanager
def deferred_interrupts(agree: Callable[[bool], bool] | None = None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then raise `KeyboardInterrupt`;
    `agree(stop)` turns this process's decision into every rank's (any rank stops: all do).

    Only the main thread can handle signals, and only a handler set from Python can be put
    back; elsewhere the block runs unprotected.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is None
            or signal.getsignal(signal.SIGTERM) is None):
        yield
        if agree is not None and agree(False):  # the other ranks take part all the same
            raise KeyboardInterrupt
        return
    pending: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        if pending and signum == signal.SIGINT:  # the second Ctrl-C: the user insists
            raise KeyboardInterrupt
        if not pending:
            print(f"\n{signal.Signals(signum).name}: finishing the training step, then stopping "
                  "(Ctrl-C again to stop at once, losing the step)", file=sys.stderr)
        pending.append(signum)

    previous = {number: signal.signal(number, note)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    stop = bool(pending)
    if agree is not None:
        stop = agree(stop)
    if stop:
        raise KeyboardInterrupt
