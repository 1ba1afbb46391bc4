"""The seed-faithful baseline: the book's recipe (steps 7.3 and 7.6) as the seed wrote it.

Pad every batch to its longest example + 1 with end-of-text, shift by one, mask all but the
first end-of-text of the padding; shuffled batches of 8 with no length grouping; fp32; logits
and cross-entropy over *every* position; plain AdamW (one tensor at a time: neither foreach
nor fused). Generation: one prompt at a time, no KV cache, a full forward pass (output head at
every position) for each new token.

Written here, not imported from sftkit, so that it stays what it measures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def book_collate(batch: Sequence[list[int]], pad_token_id: int, eos_id: int,
                 allowed_max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's `custom_collate_fn`: (inputs, targets), both (B, T)."""
    width = max(len(item) + 1 for item in batch)
    inputs_list, targets_list = [], []
    for item in batch:
        padded = item + [eos_id] + [pad_token_id] * (width - len(item) - 1)
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])
        # Only the first end-of-text of the padding is learned (the book finds it by value).
        padding = torch.arange(targets.numel()) >= len(item)
        targets[padding] = IGNORE_INDEX
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        inputs_list.append(inputs)
        targets_list.append(targets)
    return torch.stack(inputs_list), torch.stack(targets_list)


def book_batches(token_ids: Sequence[list[int]], batch_size: int, pad_token_id: int,
                 eos_id: int, seed: int = 123, epochs: int = 1
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The book's training loader: shuffled, drop_last, no grouping, as a list of batches."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(len(token_ids), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [token_ids[i] for i in order[start:start + batch_size]]
            batches.append(book_collate(items, pad_token_id, eos_id))
    return batches


def calc_loss_batch(model: torch.nn.Module, inputs: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """The book's loss: logits at every position, cross-entropy over all of them."""
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_plain_adamw(model: torch.nn.Module, lr: float = 5e-5,
                     weight_decay: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             foreach=False, fused=False)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One step of the book's `train_model_simple` loop body."""
    optimizer.zero_grad()
    loss = calc_loss_batch(model, inputs, targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def generate_one(model: torch.nn.Module, prompt: list[int], max_new_tokens: int,
                 context_size: int, eos_id: int) -> list[int]:
    """The book's `generate` (greedy): the whole sequence through the model for every token."""
    idx = torch.tensor([prompt])
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        next_id = int(torch.argmax(logits, dim=-1))
        if next_id == eos_id:
            break
        new.append(next_id)
        idx = torch.cat((idx, torch.tensor([[next_id]])), dim=1)
    return new


def generate_each(model: torch.nn.Module, prompts: Sequence[list[int]], max_new_tokens: int,
                  eos_id: int) -> tuple[list[list[int]], float]:
    """Every prompt, one at a time; (outputs, seconds)."""
    model.eval()
    started = time.perf_counter()
    outputs = [generate_one(model, list(prompt), max_new_tokens, model.config.context_length,
                            eos_id) for prompt in prompts]
    return outputs, time.perf_counter() - started
