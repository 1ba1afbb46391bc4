"""What a request becomes and what it gets back: its `Sampling`, its `Job`, its `Completion`.

A job crosses threads twice: the request's coroutine submits it, the engine's worker thread
generates it and hands each text piece back with `Job.deliver`, and the coroutine reads them
with `Job.results`. A job whose reader stops early is marked cancelled, so the worker skips it or
frees its slot.

Example:
    >>> import asyncio
    >>> from sftkit.generation import GenerationConfig
    >>> async def answer() -> list[object]:
    ...     job = Job([1, 2, 3], GenerationConfig(max_new_tokens=2))
    ...     job.connect()
    ...     job.deliver("Hel")  # what the worker does, from its thread
    ...     job.deliver("lo")
    ...     job.deliver(Completion.of(job, "Hello", [9, 10], "length",
    ...                               started=job.created, first_token_at=job.created))
    ...     return [item async for item in job.results()]
    >>> [getattr(item, "done_reason", item) for item in asyncio.run(answer())]
    ['Hel', 'lo', 'length']
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sftkit.generation import GenerationConfig
from sftkit.generation.constraints import Constraint
from sftkit.generation.grammar import JsonFormat


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_new_tokens: int = 2048
    """The cap on one request's new tokens (`num_predict`, `max_tokens`; the context may allow
    fewer): an answer it cuts short ends with done reason "length"."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies are refused with 413."""
    max_queue: int = 512
    """Requests waiting beyond this are refused with 503 (Ollama's OLLAMA_MAX_QUEUE)."""
    slots: int = 16
    """The most requests generated together (the continuous batch's rows); more wait."""


@dataclass(frozen=True)
class Sampling:
    """The generation parameters of a request, after validation (both APIs map onto these)."""

    max_new_tokens: int | None = None
    """None: as many as the limit and the context allow."""
    temperature: float = 0.0
    """0 = greedy, the server's default: the same request gives the same answer."""
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Stop strings in addition to the prompt style's."""
    num_ctx: int | None = None
    """A context window smaller than the model's (Ollama's num_ctx); None = the model's."""
    output_format: JsonFormat | None = None
    """The JSON the answer must be (Ollama's format, OpenAI's response_format); None = text."""


@dataclass
class Completion:
    """The end of a job: the whole answer and Ollama's counters (durations in nanoseconds)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    done_reason: str
    """"stop" (end-of-text, a stop string, a complete output format) or "length" (the token
    limit: the request's, the server's cap or the context)."""
    tokens: list[int]
    queue_ns: int
    prompt_eval_ns: int
    eval_ns: int
    total_ns: int

    @classmethod
    def of(cls, job: Job, text: str, tokens: list[int], done_reason: str, started: float,
           first_token_at: float) -> Completion:
        """The completion of `job`, which reached the generator at `started` (perf_counter
        seconds), had its first token at `first_token_at` and ended for `done_reason`."""
        end = time.perf_counter()
        return cls(text=text, prompt_tokens=len(job.prompt_ids), completion_tokens=len(tokens),
                   done_reason=done_reason, tokens=tokens,
                   queue_ns=_ns(started - job.created), prompt_eval_ns=_ns(
                       first_token_at - started), eval_ns=_ns(end - first_token_at),
                   total_ns=_ns(end - job.created))


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass
class Job:
    """One generation: the prompt, its limits, and the line back to the request's coroutine."""

    prompt_ids: list[int]
    config: GenerationConfig
    constraint: Constraint | None = None
    """The grammar this generation's tokens must follow (its own state: one per job)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    deliver: Callable[[object], None] = lambda item: None
    """Thread-safe: puts a text piece, a `Completion` or an exception on the request's queue."""
    _items: asyncio.Queue[object] | None = field(default=None, repr=False)

    def connect(self) -> None:
        """Route what the worker delivers to the calling coroutine's event loop (call it
        there, before the job is queued)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(items.put_nowait, item)

        self.deliver = deliver
        self._items = items

    async def results(self, disconnected: Callable[[], Awaitable[bool]] | None = None,
                      poll_seconds: float = 0.5) -> AsyncIterator[str | Completion]:
        """The text pieces as they come, then the `Completion`; a delivered exception is
        raised. Leaving early, or `disconnected()` turning true (polled every `poll_seconds`,
        for responses that send nothing until the end), cancels the job."""
        if self._items is None:
            raise RuntimeError("Job.results before Job.connect")
        checked = time.monotonic()
        try:
            while True:
                if disconnected is None:
                    item = await self._items.get()
                else:
                    try:
                        item = await asyncio.wait_for(self._items.get(), poll_seconds)
                    except asyncio.TimeoutError:
                        item = None
                    # Check on a clock, not only when idle: pieces may keep arriving.
                    if time.monotonic() - checked >= poll_seconds:
                        checked = time.monotonic()
                        if await disconnected():
                            return
                    if item is None:
                        continue
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
                if isinstance(item, Completion):
                    return
        finally:
            self.cancelled.set()  # a no-op once the job is complete
