"""The training loss: cross-entropy over supervised positions only.

The output head (the largest matmul of a small model: vocab x emb_dim) runs only where a target
is not -100, then cross-entropy is summed. The result equals the reference's
`cross_entropy(logits.flatten(0, 1), targets.flatten())` over every position, at a fraction of
the cost when prompts are masked or batches are padded.

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
    >>> inputs = torch.tensor([[1, 2, 3]]); targets = torch.tensor([[2, 3, -100]])
    >>> total, count = supervised_loss_sum(model, inputs, targets)
    >>> int(count)
    2
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from sftkit.data.collate import IGNORE_INDEX


def supervised_loss_sum(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of supervised tokens) for one batch."""
    hidden = model.forward_hidden(inputs)
    supervised = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[supervised])
    # The softmax in fp32 whatever the autocast dtype: bf16 log-probabilities are too coarse.
    loss = F.cross_entropy(logits.float(), targets[supervised], reduction="sum")
    return loss, supervised.sum()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches, max_batches: int | None = None,
              device: torch.device | None = None, autocast=None) -> float:
    """Mean loss per supervised token over (up to `max_batches` of) `batches`."""
    total = 0.0
    count = 0
    for index, (inputs, targets) in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        with autocast or contextlib.nullcontext():
            loss, tokens = supervised_loss_sum(model, inputs, targets)
        total += float(loss)
        count += int(tokens)
    return total / count if count else float("nan")
