"""Text generation: continuously batched, with a KV cache, greedy or sampled, stopping at
end-of-text or the prompt style's stop strings.

`generate`, `stream_batch` and `stream` run a `ContinuousBatcher`: `batch_size` prompts at a
time, each at its own length in its own cache row, a finished prompt's row taken by the next
one. A prompt's output does not depend on what it is batched with (greedy: token-identical to
generating it alone; seeded: prompt i draws from its own generator seeded `seed + i`).

Example (a tiny random model; `generation_settings` gives a real model's stop ids and strings):
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           vocab_size=100, context_length=32))
    >>> out = generate(model, [[1, 2, 3], [4, 5]], GenerationConfig(max_new_tokens=4))
    >>> [len(tokens) for tokens in out]
    [4, 4]
    >>> out == [generate(model, [prompt], GenerationConfig(max_new_tokens=4))[0]
    ...         for prompt in ([1, 2, 3], [4, 5])]  # batched equals one at a time
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch

from sftkit.errors import SftkitError
from sftkit.generation.batcher import ContinuousBatcher
from sftkit.generation.config import GenerationConfig
from sftkit.generation.stops import Decode, StopStrings, TokenCheck
from sftkit.models import Model

__all__ = ["GenerationConfig", "generate", "stream", "stream_batch"]

DEFAULT_CONFIG = GenerationConfig()


@contextlib.contextmanager
def _eval_mode(model: Model) -> Iterator[None]:
    """Eval mode for the duration (dropout off)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batcher(model: Model, prompts: Sequence[Sequence[int]], config: GenerationConfig,
             decode: Decode | None) -> ContinuousBatcher:
    """A batcher with every prompt queued (prompt i's id is i; its seed `config.seed + i`)."""
    if not prompts:
        raise SftkitError("generation needs at least one non-empty prompt")
    batcher = ContinuousBatcher(model, min(config.batch_size, len(prompts)), decode)
    for index, prompt in enumerate(prompts):
        seed = None if config.seed is None else config.seed + index
        batcher.add(prompt, dataclasses.replace(config, seed=seed))
    return batcher


@torch.inference_mode()
def generate(model: Model, prompts: Sequence[Sequence[int]],
             config: GenerationConfig = DEFAULT_CONFIG,
             decode: Decode | None = None,
             progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """New token ids for every prompt (stop token excluded), in the prompts' order.

    `config.batch_size` prompts are generated at once; `decode` is needed for
    `config.stop_strings`; `progress(n)` is called as n prompts finish.
    """
    results: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model):
        batcher = _batcher(model, prompts, config, decode)
        while not batcher.idle:
            for event in batcher.step():
                if event.token is not None:
                    results[event.request].append(event.token)
                if event.done is not None and progress is not None:
                    progress(1)
    return results


@torch.inference_mode()
def stream_batch(model: Model, prompts: Sequence[Sequence[int]],
                 config: GenerationConfig = DEFAULT_CONFIG,
                 should_stop: TokenCheck | None = None
                 ) -> Iterator[tuple[int, int | None]]:
    """Yield (row, token) for several prompts at once as tokens are generated, and (row, None)
    when a row finishes (for a server answering several clients with one batch).

    `should_stop(row, tokens)` is asked after each new token whether that row is done (its own
    token limit, a stop string, a client gone); `config.stop_strings` is not used here.

    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           vocab_size=100, context_length=32))
    >>> events = list(stream_batch(model, [[1, 2], [3]], GenerationConfig(max_new_tokens=2)))
    >>> [(row, token is None) for row, token in events]
    [(0, False), (1, False), (0, False), (1, False), (0, True), (1, True)]
    """
    tokens: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model):
        batcher = _batcher(model, prompts, dataclasses.replace(config, stop_strings=()), None)
        stopped: set[int] = set()
        while not batcher.idle:
            finished = []
            for event in batcher.step():
                row = event.request
                if row in stopped:
                    continue  # the cancellation of a row `should_stop` ended
                if event.token is not None:
                    tokens[row].append(event.token)
                    yield row, event.token
                    if should_stop is not None and should_stop(row, tokens[row]):
                        batcher.cancel(row)
                        stopped.add(row)
                        finished.append(row)
                        continue
                if event.done is not None:
                    finished.append(row)
            for row in finished:
                yield row, None


def stream(model: Model, prompt: Sequence[int],
           config: GenerationConfig = DEFAULT_CONFIG,
           decode: Decode | None = None) -> Iterator[int]:
    """Yield the new tokens of one prompt as they are generated (for chat and serving)."""
    should_stop = StopStrings(config.stop_strings).token_check(decode)
    for _, token in stream_batch(model, [prompt], config, should_stop):
        if token is not None:
            yield token
