"""The model of each rank as `train.strategy` wraps it: DDP (a whole copy on every rank,
gradients all-reduced) or FSDP2 (`fully_shard`, per block then the root: every rank keeps a
shard of each weight, gradient and optimizer state; all-gathered for forward and backward).

Both wrap a `LossModel`, whose forward is the training loss (the sum of token losses and the
supervised count), so the wrappers' hooks see the output head too (the fused loss uses its
weight outside `model.forward`). Gradients are SUMMED across ranks, not averaged: the
training step divides each rank's loss by the global supervised-token count, so the sum is
one process's gradient over the same examples. Only trainable parameters are communicated
(LoRA/DoRA: the adapters), as both wrappers skip parameters without `requires_grad`.

`Replica.traffic` counts what the DDP hook all-reduced (the benchmark's figure).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from sftkit.config import STRATEGIES
from sftkit.errors import SftkitError
from sftkit.models.base import DecoderModel
from sftkit.training.allocator import keep_large_blocks_mapped
from sftkit.training.gloo_sharding import SlicedReduceScatter, use_lean_chunk_cat
from sftkit.training.loss import supervised_loss_sum

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack

    from sftkit.training.loss import PackedArgs


class LossModel(nn.Module):
    """`model` whose forward is `supervised_loss_sum`: (sum of token losses, count).
    `release_head`: free the gathered head weight after the loss (FSDP2, see there)."""

    def __init__(self, model: DecoderModel, release_head: bool = False):
        super().__init__()
        self.model = model
        self.release_head = release_head

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                **packed: Unpack[PackedArgs]) -> tuple[torch.Tensor, torch.Tensor]:
        return supervised_loss_sum(self.model, inputs, targets, release_head=self.release_head,
                                   **packed)


class Traffic:
    """Bytes of gradients a rank has sent into all-reduces so far (DDP)."""

    def __init__(self) -> None:
        self.bytes = 0


class Replica:
    """A rank's wrapped model: its loss, and a context that keeps gradients local (the
    micro-batches of a step before the last, under gradient accumulation)."""

    def __init__(self, wrapped: nn.Module, strategy: str, traffic: Traffic | None = None):
        self.wrapped = wrapped
        self.strategy = strategy
        self.traffic = traffic or Traffic()

    def loss_sum(self, inputs: torch.Tensor, targets: torch.Tensor,
                 **packed: Unpack[PackedArgs]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.wrapped(inputs, targets, **packed)

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Around a micro-batch's forward and backward: gradients are reduced across ranks
        only after the step's last micro-batch."""
        if last:
            yield
        elif self.strategy == "ddp":
            with self.wrapped.no_sync():  # type: ignore[operator]
                yield
        else:
            self.wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self.wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]


def _sum_gradients(traffic, bucket):
    """A DDP communication hook that sums a bucket of gradients across ranks (DDP's own
    averages them), counting the bytes in `traffic`. (DDP checks the hook's annotations as
    objects, which `from __future__ import annotations` makes strings: it has none. Its state
    is not the replica: DDP would hold the replica that holds DDP, a cycle through C++ that
    is only freed at exit, after the process group.)"""
    buffer = bucket.buffer()
    traffic.bytes += buffer.numel() * buffer.element_size()
    work = dist.all_reduce(buffer, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def replicate(model: DecoderModel, strategy: str, device: torch.device) -> Replica:
    """Wrap `model` for training on every rank of the process group: `ddp` (and `auto`) or
    `fsdp`. Rank 0's weights are broadcast first, so every rank starts from the same ones."""
    if strategy not in STRATEGIES:
        raise SftkitError(f"train.strategy must be one of {STRATEGIES}, not {strategy!r}")
    if strategy == "fsdp":
        return _fully_shard(model, device)
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(
        LossModel(model), device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,  # constant buffers (masks, RoPE tables), equal everywhere
        gradient_as_bucket_view=True)
    traffic = Traffic()
    wrapped.register_comm_hook(traffic, _sum_gradients)
    return Replica(wrapped, "ddp", traffic)


def _fully_shard(model: DecoderModel, device: torch.device) -> Replica:
    """FSDP2: each block a unit of its own, then the root (embeddings, final norm, head).

    The root's weights stay gathered from its forward to the end of backward (FSDP2 does not
    reshard the root after forward). But the fused loss makes the head's gradients in forward,
    so backward never reads the head's weight: it is freed right after the loss
    (`LossModel(release_head=True)`), 196 MiB less per rank for gpt2-medium's tied one
    through the whole backward. FSDP2 gathers it again for the next forward."""
    from torch.distributed.fsdp import fully_shard

    gloo = dist.get_backend() == "gloo"
    if device.type == "cpu":
        # Every step all-gathers and frees each block's whole weights and gradients: with
        # glibc's moving mmap threshold, the freed blocks stay in the heap and the resident
        # set grows. Fixed, peak RSS per rank of gpt2-medium on 2 ranks measured 0.61x one
        # process's instead of 0.75x (benchmarks/distributed.py).
        keep_large_blocks_mapped()
        use_lean_chunk_cat()
    root = LossModel(model, release_head=True)
    for parameter in model.parameters():  # the weights rank 0 has, before they are sharded
        dist.broadcast(parameter.data, src=0)
    units = [*model.blocks, root]
    for unit in units:
        fully_shard(unit)
    for unit in units:
        # A sum, not a mean, reduced with SUM alone: gloo has no PREMUL_SUM (nor AVG).
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
        if gloo:
            unit.set_custom_reduce_scatter(SlicedReduceScatter())
    return Replica(root, "fsdp")
