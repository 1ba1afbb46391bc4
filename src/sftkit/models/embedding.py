"""The token embedding, and how a tied output head's gradient reaches it in place.

With tied weights (GPT-2, SmolLM2) one vocab x emb_dim matrix gets two gradients in a
training step: the output head's, which covers every row, and the lookup's, which covers only
the rows of the batch's tokens. Left to autograd, each is a whole vocab-sized tensor and a
third one holds their sum: at the end of backward, three copies of the largest matrix of a
small model (196 MiB each for gpt2-medium) where one would do.

So the lookup and the fused head + cross-entropy (`sftkit.training.loss`) share the work: a
training lookup leaves a `HeadGradient` on the embedding (`TokenEmbedding.take_pending`); the
head, when its weight is this one, puts its weight gradient there instead of returning it to
autograd; and the lookup's backward adds the batch's rows into that tensor (`index_add_`) and
returns it as the weight's one gradient. Where the head does not take part (plain logits, an
untied head), the lookup's backward makes its gradient itself, as `nn.Embedding`'s does.

Example:
    >>> emb = TokenEmbedding(10, 4)
    >>> emb.shared_with_head = True  # as `DecoderModel.tie_weights` sets it
    >>> out = emb(torch.tensor([[1, 1, 3]]))
    >>> pending = emb.take_pending()
    >>> pending.add(torch.ones(10, 4))  # what the head would hand over in its backward
    >>> out.sum().backward()
    >>> emb.weight.grad[:, 0].tolist()  # ones from the head, plus each lookup of a row
    [1.0, 3.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["HeadGradient", "TokenEmbedding"]


class HeadGradient:
    """Where the output head leaves its weight's gradient for the lookup of the same forward
    (one per training forward)."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        """Hand over a gradient of the weight (summed in place with one handed over before)."""
        if self.grad is None:
            self.grad = grad
        else:
            self.grad.add_(grad)

    def take(self) -> torch.Tensor | None:
        """The gradient handed over, if any; the slot is empty afterwards."""
        grad, self.grad = self.grad, None
        return grad


class _Lookup(torch.autograd.Function):
    """`F.embedding(idx, weight)` whose weight gradient is the head's (if it left one in
    `slot`) plus the lookup's rows, added in place."""

    @staticmethod
    def forward(ctx, idx, weight, slot):
        ctx.save_for_backward(idx)
        ctx.slot = slot
        ctx.weight_like = (weight.shape, weight.dtype, weight.device)
        return F.embedding(idx, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (idx,) = ctx.saved_tensors
        shape, dtype, device = ctx.weight_like
        grad = ctx.slot.take()
        if grad is None:  # no head took part: the lookup's own gradient, as nn.Embedding's
            grad = torch.zeros(shape, dtype=dtype, device=device)
        grad.index_add_(0, idx.reshape(-1), grad_output.reshape(-1, shape[1]).to(dtype))
        return None, grad, None


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` (same parameters and state dict) whose training lookups can take in the
    tied output head's gradient (see the module doc). The model turns it on when it ties the
    head (`DecoderModel.tie_weights`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        #: The head shares this weight: training lookups leave a `HeadGradient`.
        self.shared_with_head = False
        self._pending: HeadGradient | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        plain = (not self.shared_with_head or not self.weight.requires_grad
                 or not torch.is_grad_enabled() or self.padding_idx is not None
                 or self.max_norm is not None or self.sparse or self.scale_grad_by_freq)
        if plain:
            self._pending = None
            return super().forward(idx)
        self._pending = HeadGradient()
        return _Lookup.apply(idx, self.weight, self._pending)

    def take_pending(self) -> HeadGradient | None:
        """The last lookup's slot for the head's gradient: once (None afterwards), and None
        when that lookup made none (no gradient was being recorded, or the weight is not the
        head's)."""
        pending, self._pending = self._pending, None
        return pending
