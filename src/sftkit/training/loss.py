"""The training loss: cross-entropy over supervised positions only.

The output head (the largest matmul of a small model: vocab x emb_dim) runs only where a target
is not -100, then cross-entropy is summed. The result equals the reference's
`cross_entropy(logits.flatten(0, 1), targets.flatten())` over every position, at a fraction of
the cost when prompts are masked or batches are padded.

In full precision the head and the cross-entropy are one fused step (`head_cross_entropy`): the
logits are made a few hundred rows at a time in a reused buffer, and their gradients are taken
right there, so the (tokens x vocab) logits, their log-softmax and their gradient are never
whole in memory. Besides memory, this saves time on a CPU, where every fresh buffer of that
size costs tens of thousands of page faults.

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
import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sftkit.data.collate import IGNORE_INDEX

#: Bytes of logits the fused head makes at once (rows = this / (vocab * element size)).
CHUNK_BYTES = 96 * 2**20

_scratch = threading.local()


def _logits_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat buffer of `numel` elements, reused across calls (per thread, device and dtype)."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (like.device, like.dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
    return buffer[:numel]


class _HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), with the gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, grad_enabled):
        # `needs_input_grad` says True for a parameter even under no_grad (evaluation), where
        # making the gradients would only waste two vocab-sized matmuls per chunk.
        need_hidden, need_weight, need_bias = (
            grad_enabled and need for need in ctx.needs_input_grad[:3])
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, min(rows, chunk_rows))
        scratch = _logits_buffer(chunk * vocab, hidden)
        minus_one = hidden.new_full((chunk, 1), -1.0)
        loss = hidden.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias else None
        if need_weight and rows == 0:
            grad_weight.zero_()
        for start in range(0, rows, chunk):
            part, wanted = hidden[start:start + chunk], targets[start:start + chunk, None]
            count = part.shape[0]
            logits = scratch[: count * vocab].view(count, vocab)
            if bias is None:
                torch.mm(part, weight.t(), out=logits)
            else:
                torch.addmm(bias, part, weight.t(), out=logits)
            logits.sub_(logits.amax(dim=1, keepdim=True))
            picked = logits.gather(1, wanted)
            logits.exp_()
            total = logits.sum(dim=1, keepdim=True)
            loss += (total.log() - picked).sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            logits.div_(total).scatter_add_(1, wanted, minus_one[:count])  # softmax - onehot
            if need_hidden:
                torch.mm(logits, weight, out=grad_hidden[start:start + count])
            if need_weight:
                if start == 0:
                    torch.mm(logits.t(), part, out=grad_weight)
                else:
                    grad_weight.addmm_(logits.t(), part)
            if need_bias:
                grad_bias += logits.sum(dim=0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grads = ctx.grads
        del ctx.grads  # not kept alive by the graph once backward is done
        if not bool(grad_loss == 1):
            grads = tuple(None if grad is None else grad.mul_(grad_loss) for grad in grads)
        return *grads, None, None, None


def head_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                       chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` (N, vocab) against `targets` (N,), as one fused,
    chunked step when nothing needs mixed precision; otherwise the plain head + cross-entropy.

    Example:
        >>> import torch
        >>> head = torch.nn.Linear(8, 50, bias=False)
        >>> hidden, targets = torch.randn(5, 8), torch.tensor([1, 2, 3, 4, 5])
        >>> fused = head_cross_entropy(hidden, head, targets)
        >>> plain = F.cross_entropy(head(hidden), targets, reduction="sum")
        >>> bool(torch.allclose(fused, plain))
        True
    """
    weight, bias = head.weight, head.bias
    autocasting = torch.is_autocast_enabled(hidden.device.type)
    if autocasting or hidden.dtype != weight.dtype or hidden.dtype not in (
            torch.float32, torch.float64):
        # The softmax in fp32 whatever the autocast dtype: bf16 log-probabilities are too coarse.
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    if chunk_rows is None:
        chunk_rows = max(16, CHUNK_BYTES // (weight.shape[0] * weight.element_size()))
    return _HeadCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows,
                                   torch.is_grad_enabled())


def supervised_loss_sum(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of supervised tokens) for one batch."""
    hidden = model.forward_hidden(inputs)
    supervised = targets != IGNORE_INDEX
    loss = head_cross_entropy(hidden[supervised], model.lm_head, targets[supervised])
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
