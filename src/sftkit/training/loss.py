"""The training loss: cross-entropy over supervised positions only.

The output head (the largest matmul of a small model: vocab x emb_dim) runs only where a target
is not -100, then cross-entropy is summed. The result equals the reference's
`cross_entropy(logits.flatten(0, 1), targets.flatten())` over every position, at a fraction of
the cost when prompts are masked or batches are padded.

The head and the cross-entropy are one fused step (`head_cross_entropy`), in full precision and
under bf16/fp16 autocast alike (matmuls in the autocast dtype, the softmax in fp32): the logits
are made a few hundred rows at a time in a reused buffer, and their gradients are taken right
there, so the (tokens x vocab) logits, their log-softmax and their gradient are never whole in
memory. Besides memory, this saves time on a CPU, where every fresh buffer of that
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
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sftkit.data.collate import IGNORE_INDEX, Batch
from sftkit.data.packing import PackedBatch
from sftkit.models import matmul
from sftkit.models.base import DecoderModel
from sftkit.models.embedding import HeadGradient

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

#: Bytes of logits the fused head makes at once (rows = this / (vocab * element size)).
CHUNK_BYTES = 96 * 2**20

_scratch = threading.local()


def _logits_buffer(numel: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A flat buffer of `numel` elements, reused across calls (per thread, device and dtype)."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (device, dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, device=device, dtype=dtype)
    return buffer[:numel]


class _HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), with the gradients made in forward.

    The matmuls run in `compute_dtype` (autocast's, or the weight's own); the softmax, the loss
    and the weight's gradient sum in fp32 (fp64 for fp64), as autocast would do it unfused.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, grad_enabled, compute_dtype,
                tied):
        # `needs_input_grad` says True for a parameter even under no_grad (evaluation), where
        # making the gradients would only waste two vocab-sized matmuls per chunk. A tied
        # weight comes detached, its gradient going to the lookup (`tied`).
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        need = tuple(grad_enabled and needed
                     for needed in (need_hidden, need_weight or tied is not None, need_bias))
        with torch.autocast(hidden.device.type, enabled=False):  # the casts are ours
            loss, grads = _chunked_head_loss(hidden, weight, bias, targets, chunk_rows, need,
                                             compute_dtype)
        ctx.grads = grads
        ctx.tied = tied
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grads = ctx.grads
        del ctx.grads  # not kept alive by the graph once backward is done
        if not bool(grad_loss == 1):
            grads = tuple(None if grad is None else grad.mul_(grad_loss) for grad in grads)
        grad_hidden, grad_weight, grad_bias = grads
        if ctx.tied is not None and grad_weight is not None:
            ctx.tied.add(grad_weight)  # the lookup adds its rows and hands it to autograd
            grad_weight = None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       targets: torch.Tensor, chunk_rows: int, need: tuple[bool, ...],
                       compute_dtype: torch.dtype) -> tuple[torch.Tensor, tuple]:
    """The loss and the (hidden, weight, bias) gradients that `need` asks for, a chunk of
    rows at a time through one reused logits buffer."""
    need_hidden, need_weight, need_bias = need
    exact = torch.float64 if compute_dtype == torch.float64 else torch.float32
    low = compute_dtype != exact  # matmuls in bf16/fp16, softmax in fp32
    hidden_mm, weight_mm = hidden.to(compute_dtype), weight.to(compute_dtype)
    bias_mm = None if bias is None else bias.to(compute_dtype)
    rows, vocab = hidden.shape[0], weight.shape[0]
    chunk = max(1, min(rows, chunk_rows))
    # oneDNN's fp32 products (`sftkit.models.matmul`) come out in fresh tensors, not `out=`.
    fresh = not low and matmul.routed(hidden_mm, weight_mm, bias_mm)
    scratch = None if fresh else _logits_buffer(chunk * vocab, hidden.device, exact)
    low_scratch = _logits_buffer(chunk * vocab, hidden.device, compute_dtype) if low else None
    minus_one = torch.full((chunk, 1), -1.0, device=hidden.device, dtype=exact)
    loss = torch.zeros((), device=hidden.device, dtype=exact)
    grad_hidden = torch.empty_like(hidden_mm) if need_hidden else None
    grad_weight = torch.empty(weight.shape, device=weight.device, dtype=exact) \
        if need_weight else None
    if grad_weight is not None and (low or rows == 0):
        grad_weight.zero_()
    grad_bias = torch.zeros(vocab, device=hidden.device, dtype=exact) if need_bias else None
    weight_part = torch.empty_like(weight_mm) if need_weight and low else None
    for start in range(0, rows, chunk):
        part, wanted = hidden_mm[start:start + chunk], targets[start:start + chunk, None]
        count = part.shape[0]
        if scratch is None:
            logits = product = matmul.linear(part, weight_mm, bias_mm)
        else:
            logits = scratch[: count * vocab].view(count, vocab)
            product = logits if low_scratch is None else low_scratch[: count * vocab].view(
                count, vocab)
            if bias_mm is None:
                torch.mm(part, weight_mm.t(), out=product)
            else:
                torch.addmm(bias_mm, part, weight_mm.t(), out=product)
        if low:
            logits.copy_(product)
        logits.sub_(logits.amax(dim=1, keepdim=True))
        picked = logits.gather(1, wanted)
        logits.exp_()
        total = logits.sum(dim=1, keepdim=True)
        loss += (total.log() - picked).sum()
        if not any(need):
            continue
        logits.div_(total).scatter_add_(1, wanted, minus_one[:count])  # softmax - onehot
        if grad_bias is not None:
            grad_bias += logits.sum(dim=0)
        if low:
            logits = product.copy_(logits)  # the gradient of the logits, for low matmuls
        if grad_hidden is not None:
            if fresh:
                grad_hidden[start:start + count] = matmul.mm(logits, weight_mm)
            else:
                torch.mm(logits, weight_mm, out=grad_hidden[start:start + count])
        if grad_weight is None:
            continue
        if fresh:
            chunk_grad = matmul.mm(logits.t(), part)
            grad_weight = chunk_grad if start == 0 else grad_weight.add_(chunk_grad)
        elif weight_part is not None:  # low precision: summed over the chunks in fp32
            grad_weight.add_(torch.mm(logits.t(), part, out=weight_part))
        elif start == 0:
            torch.mm(logits.t(), part, out=grad_weight)
        else:
            grad_weight.addmm_(logits.t(), part)
    grads = (None if grad_hidden is None else grad_hidden.to(hidden.dtype),
             None if grad_weight is None else grad_weight.to(weight.dtype),
             None if grad_bias is None else grad_bias.to(weight.dtype))
    return loss, grads


def head_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                       chunk_rows: int | None = None, tied: HeadGradient | None = None,
                       release_weight: bool = False) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` (N, vocab) against `targets` (N,), as one fused,
    chunked step: in full precision, and under bf16/fp16 autocast with matmuls in that dtype
    and an fp32 softmax. Where it cannot run (hidden and weight of different dtypes without
    autocast) the plain head + cross-entropy runs, and a warning says so once. `tied` is the
    token embedding's slot when the head's weight is the embedding's
    (`sftkit.models.embedding`): the weight's gradient is left there, not returned.
    `release_weight` frees the memory of the head's weight once the fused step has made the
    loss and its gradients, which leaves backward nothing to read in it: for a weight FSDP2
    gathered for this forward only, and gathers again for the next (`sftkit.training.replicas`).
    Only a weight that is a parameter of the head, while gradients are recorded (a backward
    follows), is freed.

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
    if torch.is_autocast_enabled(hidden.device.type):
        compute_dtype = torch.get_autocast_dtype(hidden.device.type)
    elif hidden.dtype == weight.dtype:
        compute_dtype = weight.dtype
    else:
        _warn_once(f"the fused head + cross-entropy cannot take {hidden.dtype} hidden states "
                   f"with a {weight.dtype} head outside autocast: the whole (tokens x vocab) "
                   "logits are made")
        # The softmax in fp32 whatever the dtype: bf16 log-probabilities are too coarse.
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    if chunk_rows is None:
        chunk_rows = max(16, CHUNK_BYTES // (weight.shape[0] * weight.element_size()))
    is_parameter = isinstance(weight, torch.nn.Parameter)  # not a LoRA head's computed one
    release = release_weight and torch.is_grad_enabled() and is_parameter
    if tied is not None and weight.requires_grad:
        weight = weight.detach()
    else:
        tied = None
    loss = _HeadCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows,
                                   torch.is_grad_enabled(), compute_dtype, tied)
    if release:
        weight.untyped_storage().resize_(0)  # as FSDP2's reshard frees it
    return loss


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


class PackedArgs(TypedDict, total=False):
    """A packed batch's arguments for the model (`DecoderModel.forward_hidden`)."""

    positions: torch.Tensor
    document_ids: torch.Tensor


LossSum = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""`supervised_loss_sum` of a model: (inputs, targets, **packed) -> (loss sum, count)."""


def supervised_loss_sum(model: DecoderModel, inputs: torch.Tensor, targets: torch.Tensor,
                        release_head: bool = False, **packed: Unpack[PackedArgs]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of supervised tokens) for one batch; `packed` is a packed
    batch's `positions=` and `document_ids=` (`packed_layout`), passed on to the model.
    `release_head`: see `head_cross_entropy(release_weight=)`."""
    hidden = model.forward_hidden(inputs, **packed)
    supervised = targets != IGNORE_INDEX
    tied = model.tok_emb.take_pending() if model.lm_head.weight is model.tok_emb.weight \
        else None
    loss = head_cross_entropy(hidden[supervised], model.lm_head, targets[supervised],
                              tied=tied, release_weight=release_head)
    return loss, supervised.sum()


def packed_layout(batch: Batch | PackedBatch, device: torch.device | None = None
                  ) -> PackedArgs:
    """The model arguments that place a packed batch's tokens (none for a plain batch).

    >>> packed_layout(Batch(torch.ones(1, 2), torch.ones(1, 2)))
    {}
    """
    if not isinstance(batch, PackedBatch):
        return {}
    return {"positions": batch.positions.to(device),
            "document_ids": batch.document_ids.to(device)}


def examples_in(batch: Batch | PackedBatch) -> int:
    """Whole examples in a batch: its rows, or the examples packed into them."""
    return batch.examples if isinstance(batch, PackedBatch) else batch.inputs.shape[0]


def mean_loss(model: DecoderModel, batches: Iterable[Batch | PackedBatch],
              max_batches: int | None = None, device: torch.device | None = None,
              autocast=None) -> float:
    """Mean loss per supervised token over (up to `max_batches` of) `batches` (plain or
    packed)."""
    total, count = loss_total(model, batches, max_batches, device, autocast)
    return total / count if count else float("nan")


@torch.no_grad()
def loss_total(model: DecoderModel, batches: Iterable[Batch | PackedBatch],
               max_batches: int | None = None, device: torch.device | None = None,
               autocast=None, loss_sum: LossSum | None = None) -> tuple[float, int]:
    """(sum of token losses, supervised tokens) over (up to `max_batches` of) `batches`;
    `loss_sum` computes a batch's (a model wrapped for several processes), by default
    `supervised_loss_sum` on `model`."""
    loss_sum = loss_sum or functools.partial(supervised_loss_sum, model)
    total = 0.0
    count = 0
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        with autocast or contextlib.nullcontext():
            loss, tokens = loss_sum(inputs, targets, **packed_layout(batch, device))
        total += float(loss)
        count += int(tokens)
    return total, count
