"""The generation engine behind the server: one model, one worker thread, a queue of jobs.

Every request becomes a `Job` (`jobs`). A single worker thread owns the model: it takes the
waiting jobs from a `JobQueue` (`batching`), so no two generations ever share a KV cache, and
the token loop never blocks the event loop: the worker hands text pieces back to the request's
coroutine through the job.

Greedy jobs that are waiting together run as one batch (up to `Limits.max_batch`): each row
keeps its own positions, stop strings and token limit, so every client gets the answer it would
get alone, several times faster under load. A request with an output format (Ollama's
`format`, OpenAI's `response_format`) runs alone under its grammar's logits mask
(`sftkit.generation.grammar`). A job whose client has gone away is cancelled:
skipped while queued, stopped after its current token.

Example:
    >>> import asyncio, torch
    >>> from sftkit.checkpoints import LoadedModel
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> _ = torch.manual_seed(0)
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                context_length=64)
    >>> engine = Engine(LoadedModel(build_model(config).eval(), config, gpt2_tokenizer(),
    ...                             "a tiny random GPT-2"), name="tiny")
    >>> job = engine.job(engine.encode_chat([{"role": "user", "content": "Hi"}]),
    ...                  Sampling(max_new_tokens=3))
    >>> done = asyncio.run(engine.complete(job))
    >>> done.completion_tokens, done.done_reason
    (3, 'length')
    >>> engine.close()
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

from sftkit.checkpoints import LoadedModel
from sftkit.data.prompts import PromptStyle
from sftkit.errors import SftkitError
from sftkit.generation import TextStreamer, generation_settings, stream_batch
from sftkit.generation.grammar import Constraint, GrammarConstraint, JsonFormat, stream_constrained
from sftkit.generation.stops import TokenCheck
from sftkit.models import Model
from sftkit.serve.batching import JobQueue
from sftkit.serve.jobs import Completion, Job, Limits, RequestError, Sampling

log = logging.getLogger("sftkit.serve")
DEFAULT_LIMITS = Limits()


class Engine:
    """Serves one loaded model to many clients, one generation (or batch of greedy ones) at a
    time.

    `style` names a prompt style other than the model's own; the module's example serves a
    tiny model.
    """

    def __init__(self, loaded: LoadedModel, *, name: str = "sftkit", style: str | None = None,
                 limits: Limits = DEFAULT_LIMITS, load_seconds: float = 0.0):
        if style is not None:
            loaded = LoadedModel(loaded.model, loaded.config, loaded.tokenizer, loaded.source,
                                 prompt_style=style)
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.style: PromptStyle = loaded.style
        self.name = name
        self.limits = limits
        self.load_seconds = load_seconds
        self._queue = JobQueue(max_batch=limits.max_batch,
                               context_length=loaded.config.context_length)
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
        if len(self._queue) >= self.limits.max_queue:
            raise RequestError(503, "server busy: too many requests are waiting; retry later")
        if len(prompt_ids) >= context:
            raise RequestError(400, f"the prompt has {len(prompt_ids)} tokens but the context "
                                    f"holds {context}; shorten the prompt or the conversation")
        room = context - len(prompt_ids)
        wanted = self.limits.max_new_tokens if sampling.max_new_tokens is None \
            else sampling.max_new_tokens
        config = generation_settings(
            self.loaded, stop=sampling.stop,
            max_new_tokens=min(wanted, self.limits.max_new_tokens, room),
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            seed=sampling.seed)
        return Job(prompt_ids=list(prompt_ids), config=config,
                   constraint=self._constraint(sampling.output_format))

    def _constraint(self, output_format: JsonFormat | None) -> GrammarConstraint | None:
        if output_format is None:
            return None
        try:
            return output_format.constraint(self.tokenizer, self.config.vocab_size)
        except SftkitError as error:
            raise RequestError(400, str(error)) from None

    # --- running -------------------------------------------------------------------------

    async def run(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_seconds: float = 0.5) -> AsyncIterator[str | Completion]:
        """Queue `job`, then yield its text pieces as they come and finally its `Completion`.

        Leaving the loop early (the client went away) cancels the job. `disconnected` is polled
        while waiting, for responses that send nothing until the end.
        """
        job.connect()
        self._queue.put(job)
        async for item in job.results(disconnected, poll_seconds):
            yield item

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
        self._queue.close()

    def _work(self) -> None:
        while batch := self._queue.next_batch():
            try:
                self._generate(batch)
            except Exception as error:  # the requests get a 500; the server keeps serving
                log.exception("generation failed")
                for job in batch:
                    job.deliver(RequestError(500, f"generation failed: {error}"))

    def _generate(self, batch: list[Job]) -> None:
        # A job with an output format runs alone through its constraint's own loop (until the
        # batched engine masks per row), after the others of its batch.
        free = [job for job in batch if job.constraint is None]
        if free:
            self._generate_batch(free)
        for job in batch:
            if job.constraint is not None:
                self._generate_batch([job])

    def _generate_batch(self, batch: list[Job]) -> None:
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
        rows: Iterable[tuple[int, int | None]]
        if config.max_new_tokens > 0 and batch[0].constraint is not None:
            rows = _constrained_rows(self.model, batch[0], batch[0].constraint, should_stop)
        elif config.max_new_tokens > 0:
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
        completion = Completion.of(job, streamer.text, tokens, streamer.stopped, start,
                                   first_token_at)
        log.info("%d prompt + %d new tokens in %.2f s (%s), %.2f s queued",
                 completion.prompt_tokens, completion.completion_tokens,
                 (completion.total_ns - completion.queue_ns) / 1e9, completion.done_reason,
                 start - job.created)
        return completion


def _constrained_rows(model: Model, job: Job, constraint: Constraint, should_stop: TokenCheck
                      ) -> Iterator[tuple[int, int | None]]:
    """`stream_batch`'s events for one job generated under its constraint."""
    tokens: list[int] = []
    for token in stream_constrained(model, job.prompt_ids, job.config, constraint):
        tokens.append(token)
        yield 0, token
        if should_stop(0, tokens):
            break
    yield 0, None


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
