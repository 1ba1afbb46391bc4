"""Text generation: batched, with a KV cache, greedy or sampled, stopping at end-of-text or the
prompt style's stop strings.

Prompts of different lengths share a batch by left padding: each row's positions start at its
own first real token and padded key slots are masked, so a prompt's output does not depend on
what it is batched with. Finished rows leave the batch (and the cache) at once.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from sftkit.errors import SftkitError
from sftkit.generation.stops import Decode, StopStrings, TokenCheck
from sftkit.models import Model


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy (argmax)."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities sum to top_p."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end a sequence (not included in the output)."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a sequence (the output is cut before them by the caller)."""
    seed: int | None = None
    batch_size: int = 64


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token (B,) for each row of `logits` (B, V).

    >>> sample_next(torch.tensor([[0.1, 2.0, 0.3]])).tolist()
    [1]
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_prompts(model: Model, prompts: Sequence[Sequence[int]],
                   config: GenerationConfig) -> int:
    """The number of new tokens that fits the context after the longest prompt."""
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise SftkitError("generation needs at least one non-empty prompt")
    context = model.config.context_length
    longest = max(len(prompt) for prompt in prompts)
    if longest >= context:
        raise SftkitError(f"a prompt has {longest} tokens; the model's context holds {context}, "
                          "so nothing can be generated after it")
    return min(config.max_new_tokens, context - longest)


def _stream_batch(model: Model, prompts: Sequence[Sequence[int]],
                  config: GenerationConfig, generator: torch.Generator | None,
                  stop_check: TokenCheck | None
                  ) -> Iterator[tuple[int, int | None]]:
    """Yield (row, token) as tokens are generated, and (row, None) when a row finishes."""
    device = next(model.parameters()).device
    max_new = _check_prompts(model, prompts, config)
    width = max(len(prompt) for prompt in prompts)
    pad_lengths = torch.tensor([width - len(prompt) for prompt in prompts], device=device)
    idx = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
    cache = model.make_kv_cache(len(prompts), width + max_new, device=device)
    # The output head only where the next token is read: the prompt's other positions do not
    # need logits (a vocab-sized matmul per position).
    hidden = model.forward_hidden(idx, kv_cache=cache, input_pos=0, pad_lengths=pad_lengths)
    logits = model.lm_head(hidden[:, -1])
    rows = list(range(len(prompts)))  # original row of each live cache row
    outputs: list[list[int]] = [[] for _ in prompts]
    stop_ids = set(config.stop_ids)
    for step in range(max_new):
        tokens = sample_next(logits, config.temperature, config.top_k, config.top_p,
                             generator).tolist()
        keep = []
        for live, (row, token) in enumerate(zip(rows, tokens)):
            if token in stop_ids:
                yield row, None
                continue
            outputs[row].append(token)
            yield row, token
            if stop_check is not None and stop_check(row, outputs[row]):
                yield row, None
                continue
            keep.append(live)
        if not keep or step == max_new - 1:
            for live in keep:
                yield rows[live], None
            return
        if len(keep) < len(rows):
            selected = torch.tensor(keep, device=device)
            cache.select_rows(selected)
            pad_lengths = pad_lengths[selected]
            rows = [rows[live] for live in keep]
            tokens = [tokens[live] for live in keep]
        next_idx = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        logits = model(next_idx, kv_cache=cache, input_pos=width + step,
                       pad_lengths=pad_lengths)[:, -1]


@contextlib.contextmanager
def _generating(model: Model, seed: int | None
                ) -> Iterator[torch.Generator | None]:
    """Eval mode for the duration (dropout off), and the sampling generator for `seed`."""
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    try:
        yield generator
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate(model: Model, prompts: Sequence[Sequence[int]],
             config: GenerationConfig = GenerationConfig(),
             decode: Decode | None = None,
             progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """New token ids for every prompt (stop token excluded), in the prompts' order.

    Prompts are batched `config.batch_size` at a time, longest first (less padding).
    `decode` is needed for `config.stop_strings`; `progress(n)` is called as n prompts finish.
    """
    stop_check = StopStrings(config.stop_strings).token_check(decode)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    with _generating(model, config.seed) as generator:
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            for row, token in _stream_batch(model, [prompts[i] for i in batch], config,
                                             generator, stop_check):
                if token is None:
                    if progress is not None:
                        progress(1)
                else:
                    results[batch[row]].append(token)
    return results


@torch.inference_mode()
def stream_batch(model: Model, prompts: Sequence[Sequence[int]],
                 config: GenerationConfig = GenerationConfig(),
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
    with _generating(model, config.seed) as generator:
        yield from _stream_batch(model, prompts, config, generator, should_stop)


def stream(model: Model, prompt: Sequence[int],
           config: GenerationConfig = GenerationConfig(),
           decode: Decode | None = None) -> Iterator[int]:
    """Yield the new tokens of one prompt as they are generated (for chat and serving)."""
    should_stop = StopStrings(config.stop_strings).token_check(decode)
    for _, token in stream_batch(model, [prompt], config, should_stop):
        if token is not None:
            yield token
