"""The server's one generation thread: it drives a `ContinuousBatcher` over every request.

A submitted job joins the running batch at the next decode step (a free slot permitting; else
it waits in the batcher's queue), so a short request never waits for a long one to finish, and
sampled, greedy and constrained requests share the batch, each row with its own settings. A job
whose client has gone away (`Job.cancelled`) leaves its slot at the next step. Each job's
tokens become text through its own `TextStreamer` and go back to its coroutine
(`Job.deliver`), then its `Completion`.

Example (a tiny random model; `Engine` does this for the server):
    >>> import asyncio, torch
    >>> from sftkit.generation import GenerationConfig
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.serve.jobs import Completion, Job
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           context_length=64)).eval()
    >>> worker = Worker(model, gpt2_tokenizer().decode, slots=2)
    >>> async def answer(new_tokens: int) -> Completion:
    ...     job = Job([1, 2, 3], GenerationConfig(max_new_tokens=new_tokens))
    ...     job.connect()
    ...     worker.submit(job)
    ...     return [item async for item in job.results()][-1]
    >>> async def both() -> list[Completion]:
    ...     return await asyncio.gather(answer(5), answer(2))
    >>> [(done.completion_tokens, done.done_reason) for done in asyncio.run(both())]
    [(5, 'length'), (2, 'length')]
    >>> worker.close()
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from sftkit.errors import SftkitError
from sftkit.generation import ContinuousBatcher, Event, TextStreamer
from sftkit.generation.stops import Decode
from sftkit.models import Model
from sftkit.serve.jobs import Completion, Job, RequestError

log = logging.getLogger("sftkit.serve")


class Throughput:
    """Generated tokens per second over the last `window` seconds (thread-safe).

    >>> meter = Throughput(window=10.0)
    >>> meter.count(30, now=100.0)
    >>> meter.count(20, now=104.0)
    >>> meter.per_second(now=105.0), meter.per_second(now=200.0)
    (5.0, 0.0)
    """

    def __init__(self, window: float = 10.0):
        self.window = window
        self._counts: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def count(self, tokens: int, now: float | None = None) -> None:
        with self._lock:
            self._counts.append((time.monotonic() if now is None else now, tokens))

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._counts and self._counts[0][0] <= now - self.window:
                self._counts.popleft()
            return sum(tokens for _, tokens in self._counts) / self.window


@dataclass
class _Running:
    """A job in the batcher, and what its answer has so far."""

    job: Job
    streamer: TextStreamer
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    tokens: list[int] = field(default_factory=list)
    cancel_sent: bool = False


class Worker:
    """Runs submitted jobs on `model`, at most `slots` at a time (see the module)."""

    def __init__(self, model: Model, decode: Decode, slots: int):
        model.eval()
        self.model = model
        self.decode = decode
        self.slots = slots
        self.throughput = Throughput()
        self._batcher = ContinuousBatcher(model, slots, decode)
        self._running: dict[int, _Running] = {}
        self._submitted: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="sftkit-generate", daemon=True)
        self._thread.start()

    # --- what the event loop sees ----------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._submitted) + self._batcher.waiting

    @property
    def active(self) -> int:
        """Jobs generating (in a slot)."""
        return self._batcher.active

    def submit(self, job: Job) -> None:
        """Hand `job` to the worker (thread-safe): it joins the batch at the next step."""
        with self._wake:
            self._submitted.append(job)
            self._wake.notify()

    def close(self) -> None:
        """Let the thread end once the jobs it has are done."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def load(self) -> str:
        """The load, for log lines."""
        return (f"queue {self.queued}, active {self.active}/{self.slots}, "
                f"{self.throughput.per_second():.1f} tokens/s")

    # --- the generation thread -------------------------------------------------------------

    def _work(self) -> None:
        while (new := self._wait_for_work()) is not None:
            try:
                self._step(new)
            except Exception as error:  # the requests get a 500; the server keeps serving
                log.exception("generation failed")
                for running in self._running.values():
                    running.job.deliver(RequestError(500, f"generation failed: {error}"))
                self._running.clear()
                self._batcher = ContinuousBatcher(self.model, self.slots, self.decode)

    def _wait_for_work(self) -> list[Job] | None:
        """The newly submitted jobs once there is anything to do; None at close when idle."""
        with self._wake:
            while not self._submitted and self._batcher.idle:
                if self._closed:
                    return None
                self._wake.wait()
            new = list(self._submitted)
            self._submitted.clear()
            return new

    def _step(self, new: list[Job]) -> None:
        for job in new:
            self._admit(job)
        for request, running in self._running.items():
            if running.job.cancelled.is_set() and not running.cancel_sent:
                self._batcher.cancel(request)  # its slot is free at this step
                running.cancel_sent = True
        events = self._batcher.step()
        self.throughput.count(sum(event.token is not None for event in events))
        for event in events:
            self._take(event)

    def _admit(self, job: Job) -> None:
        if job.cancelled.is_set():
            log.info("skipped a queued request: its client went away")
            return
        try:
            request = self._batcher.add(job.prompt_ids, job.config, job.constraint)
        except SftkitError as error:
            job.deliver(RequestError(400, str(error)))
            return
        self._running[request] = _Running(job, TextStreamer(self.decode,
                                                            job.config.stop_strings))

    def _take(self, event: Event) -> None:
        running = self._running[event.request]
        if event.token is not None:
            if running.first_token_at is None:
                running.first_token_at = time.perf_counter()
            running.tokens.append(event.token)
            piece = running.streamer.feed(event.token)
            if piece:
                running.job.deliver(piece)
        if event.done is not None:
            del self._running[event.request]
            self._finish(running, event.done)

    def _finish(self, running: _Running, reason: str) -> None:
        job, tokens = running.job, running.tokens
        if reason == "cancelled" or job.cancelled.is_set():
            log.info("stopped a generation after %d tokens: its client went away", len(tokens))
            return
        rest = running.streamer.flush()
        if rest:
            job.deliver(rest)
        done = Completion.of(job, running.streamer.text, tokens, reason, running.started,
                             running.first_token_at or time.perf_counter())
        job.deliver(done)
        log.info("%d prompt + %d new tokens in %.2f s (%s), %.2f s queued; %s",
                 done.prompt_tokens, done.completion_tokens,
                 (done.total_ns - done.queue_ns) / 1e9, done.done_reason,
                 running.started - job.created, self.load())
