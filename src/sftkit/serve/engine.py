"""The generation engine behind the server: one model, the requests' jobs, one worker thread.

Every request becomes a `Job` (`jobs`) with its own settings, limits and output format. A
single worker thread (`worker`) owns the model and runs every job through one continuous batch:
a request joins it at the next decode step, a short one never waits for a long one to finish,
and one whose client has gone away leaves its slot at once. The token loop never blocks the
event loop: the worker hands text pieces back to the request's coroutine through the job.

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

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from sftkit.checkpoints import LoadedModel
from sftkit.data.prompts import PromptStyle
from sftkit.errors import SftkitError
from sftkit.generation import generation_settings
from sftkit.generation.grammar import GrammarConstraint, JsonFormat
from sftkit.serve.jobs import Completion, Job, Limits, RequestError, Sampling
from sftkit.serve.worker import Worker

DEFAULT_LIMITS = Limits()


class Engine:
    """Serves one loaded model to many clients, up to `limits.slots` generating at once.

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
        self.worker = Worker(loaded.model, loaded.tokenizer.decode, limits.slots)

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
        if self.worker.queued >= self.limits.max_queue:
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
        self.worker.submit(job)
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
        """Stop the worker once the running jobs are done."""
        self.worker.close()

    def load(self) -> dict[str, Any]:
        """The load, as /api/ps shows it: jobs waiting for a slot, jobs generating, slots, and
        tokens generated per second (over the last 10 s)."""
        return {"queue_length": self.worker.queued, "active_rows": self.worker.active,
                "slots": self.worker.slots,
                "tokens_per_second": round(self.worker.throughput.per_second(), 1)}


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
