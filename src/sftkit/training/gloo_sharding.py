"""FSDP2 on CPUs (the gloo backend) without its two large temporary copies.

At the end of each FSDP unit's backward, FSDP2 copies the unit's whole gradients into one
flat buffer (`torch.ops.fsdp.chunk_cat`, each rank's rows side by side) and reduce-scatters
that buffer. On CPUs both steps make a temporary the size of the unit's gradients:

- PyTorch's CPU `chunk_cat` first copies every tensor whose rows do not split evenly into
  a padded tensor, then copies that into the buffer. The largest tensor of a small model,
  the vocabulary matrix, has rows that do not split in two for GPT-2 (50,257): 196 MiB more for
  gpt2-medium. `lean_chunk_cat` copies each rank's rows straight into the buffer.
- gloo's reduce-scatter of one tensor works on a copy of it. `SlicedReduceScatter` sends the
  buffer in slices of `SLICE_BYTES`: the same bytes on the wire in a few more messages, with a
  slice-sized copy instead of a whole one.

Measured (benchmarks/distributed.py, gpt2-medium, AdamW, 2 ranks), with the output head's
weight freed after the fused loss too (`supervised_loss_sum(release_head=True)`): peak RSS per
rank 3,700 -> 3,500 MiB, against one process's 6,000 (0.58). On CUDA (NCCL) FSDP2 runs as is.

Example:
    >>> out = torch.empty(2, 4)
    >>> lean_chunk_cat([torch.arange(5.0), torch.arange(2.0)], 0, 2, out)
    >>> out.tolist()  # rank 0's rows of each tensor, then rank 1's; padded with zeros
    [[0.0, 1.0, 2.0, 0.0], [3.0, 4.0, 0.0, 1.0]]
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter  # FSDP2's own base

__all__ = ["SLICE_BYTES", "SlicedReduceScatter", "lean_chunk_cat", "use_lean_chunk_cat"]

#: The largest piece of a reduce-scatter buffer gloo gets at once.
SLICE_BYTES = 32 << 20


def lean_chunk_cat(tensors: list[torch.Tensor], dim: int, num_chunks: int,
                   out: torch.Tensor) -> None:
    """`torch._chunk_cat(tensors, dim, num_chunks, out=out)` without padded copies: chunk `i`
    of every tensor (its rows split as `torch.chunk` splits them, each chunk padded to the
    first's size) goes, flattened, into row `i` of `out` (num_chunks, -1), one after the
    other. The padding is zeros. Along other dims than 0, `torch._chunk_cat` does it."""
    if dim != 0 or any(tensor.dim() == 0 for tensor in tensors):
        torch._chunk_cat(tensors, dim, num_chunks, out=out)
        return
    rows = out.view(num_chunks, -1)
    offset = 0
    for tensor in tensors:
        per_chunk = -(-tensor.size(0) // num_chunks)
        width = per_chunk * tensor[0].numel() if tensor.size(0) else 0
        for chunk in range(num_chunks):
            part = tensor[chunk * per_chunk:(chunk + 1) * per_chunk].reshape(-1)
            into = rows[chunk, offset:offset + width]
            into[:part.numel()].copy_(part)
            if part.numel() < width:  # the padding (the last chunks of uneven rows)
                into[part.numel():].zero_()
        offset += width
    if offset != rows.size(1):
        raise ValueError(f"chunk_cat: out has {rows.size(1)} elements per chunk, the tensors "
                         f"{offset}")


_registered: list[torch.library.Library] = []  # alive as long as the process


@functools.cache
def use_lean_chunk_cat() -> bool:
    """Make `lean_chunk_cat` the CPU kernel of FSDP2's `fsdp::chunk_cat` (once per process).
    False when this PyTorch's FSDP2 has no such operator (nothing is changed then)."""
    import torch.distributed.fsdp._fully_shard._fsdp_collectives  # noqa: F401  defines the op

    if not hasattr(torch.ops.fsdp, "chunk_cat"):
        return False
    library = torch.library.Library("fsdp", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": we mean to
        warnings.simplefilter("ignore", UserWarning)
        library.impl("chunk_cat", lean_chunk_cat, "CPU")
    _registered.append(library)
    return True


class SlicedReduceScatter(ReduceScatter):
    """FSDP2's reduce-scatter of a unit's gradient buffer, in slices of at most `slice_bytes`
    (`FSDPModule.set_custom_reduce_scatter`): each rank's part of the output is the sum of
    that part over the ranks, as with one `reduce_scatter_tensor`."""

    def __init__(self, slice_bytes: int = SLICE_BYTES) -> None:
        self.slice_bytes = slice_bytes

    def allocate(self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor,
                 group: dist.ProcessGroup, op: dist.ReduceOp, async_op: bool = False) -> None:
        ranks = dist.get_world_size(group)
        rows = input_tensor.view(ranks, -1)  # row r: what goes to rank r
        width = max(1, self.slice_bytes // (ranks * rows.element_size()))
        for start in range(0, rows.size(1), width):
            dist.reduce_scatter_tensor(output_tensor[start:start + width],
                                       rows[:, start:start + width].reshape(-1),
                                       op=op, group=group)
