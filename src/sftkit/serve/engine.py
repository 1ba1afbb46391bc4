"""The generation engine behind the server: one model, one worker thread, a queue of jobs.

Every request becomes a `Job`. A single worker thread owns the model: it takes the waiting jobs
in order, so no two generations ever share a KV cache, and the token loop never blocks the event
loop: the worker hands text pieces to the request's coroutine through an asyncio queue.

Greedy jobs that are waiting together run as one batch (up to `Limits.max_batch`): each row
keeps its own positions, stop strings and token limit, and greedy output does not depend on the
batch (left padding is masked), so every client gets the answer it would get alone, several
times faster under load. Sampled jobs run alone, so a seed reproduces its answer. A job whose
client has gone away is cancelled: skipped while queued, stopped after its current token.

Example:
    >>> engine = Engine(load_pretrained("smollm2-135m-instruct"))  # doctest: +SKIP
    >>> job = engine.job(engine.encode_chat([{"role": "user", "content": "Hi"}]),
    ...                  Sampling(max_new_tokens=8))  # doctest: +SKIP
    >>> async for item in engine.run(job): print(item)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftkit.checkpoints import LoadedModel
from sftkit.data.prompts import PromptStyle, get_style
from sftkit.errors import SftkitError
from sftkit.generation import GenerationConfig, TextStreamer, stream_batch

log = logging.getLogger("sftkit.serve")


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
    """The most tokens one request may generate (the context may allow fewer)."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies are refused with 413."""
    max_queue: int = 512
    """Requests waiting beyond this are refused with 503 (Ollama's OLLAMA_MAX_QUEUE)."""
    max_batch: int = 16
    """The most greedy requests generated together."""


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


@dataclass
class Completion:
    """The end of a job: the whole answer and Ollama's counters (durations in nanoseconds)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    done_reason: str
    """"stop" (end-of-text or a stop string) or "length" (the token limit)."""
    tokens: list[int]
    queue_ns: int
    prompt_eval_ns: int
    eval_ns: int
    total_ns: int


@dataclass
class Job:
    """One generation: the prompt, its limits, and the line back to the request's coroutine."""

    prompt_ids: list[int]
    config: GenerationConfig
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    deliver: Callable[[object], None] = lambda item: None
    """Thread-safe: puts a text piece, a `Completion` or an exception on the request's queue."""


class Engine:
    """Serves one loaded model to many clients, one generation (or batch of greedy ones) at a
    time.

    Example:
        >>> engine = Engine(load_pretrained("runs/demo/model"), name="demo")  # doctest: +SKIP
        >>> engine.name, engine.style.name  # doctest: +SKIP
        ('demo', 'alpaca')
    """

    def __init__(self, loaded: LoadedModel, *, name: str = "sftkit", style: str | None = None,
                 limits: Limits = Limits(), load_seconds: float = 0.0):
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.style: PromptStyle = get_style(style or loaded.config.prompt_style)
        self.name = name
        self.limits = limits
        self.load_seconds = load_seconds
        self._waiting: collections.deque[Job] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="sftkit-generate", daemon=True)
        self._worker.start()

    # --- prompts -------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation in the model's prompt style (ending with a user turn)."""
        try:
            return self.tokenizer.encode(self.style.format_conversation(messages))
        except SftkitError as error:
            raise RequestError(400, str(error)) from None

    def job(self, prompt_ids: list[int], sampling: Sampling) -> Job:
        """A job for `prompt_ids`, or a 400 when the prompt leaves no room in the context."""
        context = self.config.context_length
        if sampling.num_ctx is not None:
            context = min(context, sampling.num_ctx)
        if not prompt_ids:
            raise RequestError(400, "the prompt is empty")
        if len(self._waiting) >= self.limits.max_queue:
            raise RequestError(503, "server busy: too many requests are waiting; retry later")
        if len(prompt_ids) >= context:
            raise RequestError(400, f"the prompt has {len(prompt_ids)} tokens but the context "
                                    f"holds {context}; shorten the prompt or the conversation")
        room = context - len(prompt_ids)
        wanted = self.limits.max_new_tokens if sampling.max_new_tokens is None \
            else sampling.max_new_tokens
        config = GenerationConfig(
            max_new_tokens=min(wanted, self.limits.max_new_tokens, room),
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            seed=sampling.seed, stop_ids=(self.tokenizer.eos_id,),
            stop_strings=tuple(dict.fromkeys((*self.style.stop_strings, *sampling.stop))),
        )
        return Job(prompt_ids=list(prompt_ids), config=config)

    # --- running -------------------------------------------------------------------------

    async def run(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_seconds: float = 0.5) -> AsyncIterator[str | Completion]:
        """Queue `job`, then yield its text pieces as they come and finally its `Completion`.

        Leaving the loop early (the client went away) cancels the job. `disconnected` is polled
        while waiting, for responses that send nothing until the end.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(items.put_nowait, item)

        job.deliver = deliver
        with self._changed:
            self._waiting.append(job)
            self._changed.notify()
        checked = time.monotonic()
        try:
            while True:
                if disconnected is None:
                    item = await items.get()
                else:
                    try:
                        item = await asyncio.wait_for(items.get(), poll_seconds)
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
            job.cancelled.set()  # a no-op once the job is complete

    async def complete(self, job: Job,
                       disconnected: Callable[[], Awaitable[bool]] | None = None
                       ) -> Completion | None:
        """The job's `Completion`, or None when the client went away first."""
        async for item in self.run(job, disconnected):
            if isinstance(item, Completion):
                return item
        return None

    def close(self) -> None:
        """Stop the worker once the queued jobs are done."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _work(self) -> None:
        while batch := self._next_batch():
            try:
                self._generate(batch)
            except Exception as error:  # the requests get a 500; the server keeps serving
                log.exception("generation failed")
                for job in batch:
                    job.deliver(RequestError(500, f"generation failed: {error}"))

    def _next_batch(self) -> list[Job]:
        """The oldest waiting job, with the greedy jobs that can share its batch; [] at close."""
        with self._changed:
            while True:
                while self._waiting and self._waiting[0].cancelled.is_set():
                    self._waiting.popleft()
                    log.info("skipped a queued request: its client went away")
                if self._waiting:
                    break
                if self._closed:
                    return []
                self._changed.wait()
            batch = [self._waiting.popleft()]
            if batch[0].config.temperature == 0:
                for job in list(self._waiting):
                    if len(batch) < self.limits.max_batch and self._fits(batch, job):
                        self._waiting.remove(job)
                        batch.append(job)
            return batch

    def _fits(self, batch: list[Job], job: Job) -> bool:
        """Whether `job` can join `batch` without any row getting fewer tokens than alone: the
        batch's room is the context after its longest prompt."""
        if job.cancelled.is_set() or job.config.temperature != 0:
            return False
        rows = [*batch, job]
        room = self.config.context_length - max(len(row.prompt_ids) for row in rows)
        return all(row.config.max_new_tokens <= room for row in rows)

    def _generate(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        streamers = [TextStreamer(self.tokenizer.decode, job.config.stop_strings)
                     for job in batch]
        tokens: list[list[int]] = [[] for _ in batch]
        first_token_at = [start] * len(batch)

        def should_stop(row: int, generated: list[int]) -> bool:
            job = batch[row]
            return (streamers[row].stopped or job.cancelled.is_set()
                    or len(generated) >= job.config.max_new_tokens)

        # Sampling settings come from the first job: sampled jobs always run alone.
        config = dataclasses.replace(
            batch[0].config, stop_strings=(),
            max_new_tokens=max(job.config.max_new_tokens for job in batch))
        prompts = [job.prompt_ids for job in batch]
        if config.max_new_tokens > 0:
            rows = stream_batch(self.model, prompts, config, should_stop)
        else:
            rows = iter([(row, None) for row in range(len(batch))])
        for row, token in rows:
            job = batch[row]
            if token is None:
                job.deliver(self._finish(job, streamers[row], tokens[row], start,
                                         first_token_at[row]))
                continue
            if not tokens[row]:
                first_token_at[row] = time.perf_counter()
            tokens[row].append(token)
            piece = streamers[row].feed(token)
            if piece:
                job.deliver(piece)
        if len(batch) > 1:
            log.info("a batch of %d requests done in %.2f s", len(batch),
                     time.perf_counter() - start)

    def _finish(self, job: Job, streamer: TextStreamer, tokens: list[int], start: float,
                first_token_at: float) -> Completion:
        if job.cancelled.is_set():
            log.info("stopped a generation after %d tokens: its client went away", len(tokens))
        else:
            rest = streamer.flush()
            if rest:
                job.deliver(rest)
        end = time.perf_counter()
        hit_limit = len(tokens) >= job.config.max_new_tokens and not streamer.stopped
        completion = Completion(
            text=streamer.text, prompt_tokens=len(job.prompt_ids),
            completion_tokens=len(tokens), done_reason="length" if hit_limit else "stop",
            tokens=tokens, queue_ns=_ns(start - job.created),
            prompt_eval_ns=_ns(first_token_at - start), eval_ns=_ns(end - first_token_at),
            total_ns=_ns(end - job.created),
        )
        log.info("%d prompt + %d new tokens in %.2f s (%s), %.2f s queued",
                 completion.prompt_tokens, completion.completion_tokens, end - start,
                 completion.done_reason, start - job.created)
        return completion


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def describe(engine: Engine) -> dict[str, Any]:
    """Facts about the served model shared by /api/tags, /api/show and /v1/models."""
    config = engine.config
    parameters = engine.model.num_parameters()
    weight = next(engine.model.parameters())
    return {
        "family": config.family,
        "parameters": parameters,
        "size": parameters * weight.element_size(),
        "dtype": {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}.get(
            str(weight.dtype).removeprefix("torch."), str(weight.dtype)),
        "format": "gguf" if "GGUF" in engine.loaded.source else "safetensors",
    }
