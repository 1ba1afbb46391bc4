"""Work split across ranks (`own_share`) comes back on rank 0 in the original order
(`gather_shares`), every rank having done its share; the others get None.

The file is also the workers' script: `torchrun ... test_distributed_shares.py OUT COUNT`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from sftkit.training import distributed

LAUNCH_SECONDS = 120


def test_two_ranks_share_the_work_and_rank_0_gathers_it_in_order(tmp_path):
    out = tmp_path / "gathered.json"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", __file__, str(out), "7"], env=env,
                          capture_output=True, text=True, timeout=LAUNCH_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = json.loads(out.read_text())
    assert gathered["rank 0"] == [[item, item % 2] for item in range(7)]
    assert gathered["rank 1"] is None


def test_interleaved_shares_come_back_in_order():
    for count in range(6):
        items = list(range(count))
        for size in (1, 2, 3, 4):
            shares = [items[rank::size] for rank in range(size)]
            assert distributed.interleave(shares) == items


def work(out: Path, count: int) -> None:
    """Each rank marks its share of `count` items with its rank; rank 0 writes what every
    rank gathered."""
    distributed.setup("cpu")
    rank = distributed.world().rank
    gathered = distributed.gather_shares([[item, rank] for item
                                          in distributed.own_share(range(count))])
    everyone: list = [None, None]
    dist.all_gather_object(everyone, gathered)
    if rank == 0:
        out.write_text(json.dumps({f"rank {r}": value for r, value in enumerate(everyone)}))


if __name__ == "__main__":
    work(Path(sys.argv[1]), int(sys.argv[2]))
