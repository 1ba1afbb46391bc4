"""FSDP2's copy-in and reduce-scatter on CPUs (`sftkit.training.gloo_sharding`) give what
PyTorch's own give: the same buffer, padding included, and the same reduced shards.

The file is also the workers' script: `torchrun ... test_gloo_sharding.py OUT`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from sftkit.training.gloo_sharding import SlicedReduceScatter, lean_chunk_cat, use_lean_chunk_cat

LAUNCH_SECONDS = 120
SHAPES = [[(5,)], [(5,), (2,)], [(7, 3), (4,), (1, 2)], [(12, 4), (9, 2, 3)], [(6, 3)]]


def chunk_cat_out(tensors: list[torch.Tensor], chunks: int) -> torch.Tensor:
    """A buffer of the size FSDP2 gives, full of NaN: padding left unwritten would show."""
    per_chunk = sum(-(-t.size(0) // chunks) * t[0].numel() for t in tensors)
    return torch.full((chunks, per_chunk), float("nan"))


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_lean_chunk_cat_equals_torchs_padding_included(shapes, chunks):
    torch.manual_seed(0)
    tensors = [torch.randn(shape) for shape in shapes]
    expected, got = chunk_cat_out(tensors, chunks), chunk_cat_out(tensors, chunks)
    torch._chunk_cat(tensors, 0, chunks, out=expected)
    lean_chunk_cat(tensors, 0, chunks, got)
    assert torch.equal(got, expected)


def test_lean_chunk_cat_is_fsdps_cpu_kernel_once_installed():
    assert use_lean_chunk_cat()
    assert "gloo_sharding.py" in torch._C._dispatch_dump("fsdp::chunk_cat")
    tensors = [torch.randn(5, 3), torch.randn(4)]
    expected, got = chunk_cat_out(tensors, 2), chunk_cat_out(tensors, 2)
    torch._chunk_cat(tensors, 0, 2, out=expected)
    torch.ops.fsdp.chunk_cat(tensors, dim=0, num_chunks=2, out=got)
    assert torch.equal(got, expected)


def test_sliced_reduce_scatter_gives_each_rank_its_summed_shard(tmp_path):
    out = tmp_path / "shards.json"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", __file__, str(out)], env=env,
                          capture_output=True, text=True, timeout=LAUNCH_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == {"0": True, "1": True}


def work(out: Path) -> None:
    """Each rank: a 2 x 37 buffer reduce-scattered in slices of 3 to 40 floats and at once;
    rank 0 writes whether each rank's shards agree."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    buffer = torch.arange(74, dtype=torch.float32) * (rank + 1) + rank
    expected = torch.empty(37)
    dist.reduce_scatter_tensor(expected, buffer.clone(), op=dist.ReduceOp.SUM)
    agree = True
    for slice_bytes in (12, 8 * 37, 160, 1 << 20):
        got = torch.full((37,), float("nan"))
        SlicedReduceScatter(slice_bytes)(got, buffer.clone(), dist.group.WORLD,
                                         dist.ReduceOp.SUM)
        agree = agree and torch.equal(got, expected)
    results: list[bool | None] = [None, None]
    dist.all_gather_object(results, agree)
    if rank == 0:
        out.write_text(json.dumps({str(r): ok for r, ok in enumerate(results)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    work(Path(sys.argv[1]))
