"""sftkit's generation before continuous batching (commit 3f4b5f8), kept to measure against:
static batches of `batch_size` prompts, longest first, left-padded; finished rows leave the
batch and the cache, and the next batch starts only when the whole batch is done.

Written here, not imported from sftkit, so that it stays what it measures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from sftkit.models import Model


def _stream_batch(model: Model, prompts: Sequence[Sequence[int]], max_new: int,
                  stop_ids: set[int]) -> Iterator[tuple[int, int | None]]:
    device = next(model.parameters()).device
    max_new = min(max_new, model.config.context_length - max(len(p) for p in prompts))
    width = max(len(prompt) for prompt in prompts)
    pad_lengths = torch.tensor([width - len(prompt) for prompt in prompts], device=device)
    idx = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
    cache = model.make_kv_cache(len(prompts), width + max_new, device=device)
    hidden = model.forward_hidden(idx, kv_cache=cache, input_pos=0, pad_lengths=pad_lengths)
    logits = model.lm_head(hidden[:, -1])
    rows = list(range(len(prompts)))
    for step in range(max_new):
        tokens = logits.argmax(dim=-1).tolist()
        keep = []
        for live, (row, token) in enumerate(zip(rows, tokens)):
            if token in stop_ids:
                yield row, None
                continue
            yield row, token
            keep.append(live)
        if not keep or step == max_new - 1:
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


@torch.inference_mode()
def generate_static(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    stop_ids: set[int], batch_size: int) -> list[list[int]]:
    """Greedy new tokens of every prompt, static batches longest first (the old `generate`)."""
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for row, token in _stream_batch(model, [prompts[i] for i in batch], max_new_tokens,
                                        stop_ids):
            if token is not None:
                results[batch[row]].append(token)
    return results
