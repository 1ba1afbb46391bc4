"""Training on several processes with PyTorch's own engine: `torchrun` starts them, this
module joins them into one process group and gives the trainer what it needs.

- `World`: this process's place (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, set by
  torchrun); one process without them.
- `setup`: the process group, gloo on the CPU and NCCL on CUDA (chosen by the device), each
  rank on `cuda:LOCAL_RANK`, the cores shared among the machine's ranks; destroyed at exit.
- `shard_loader`: rank r's slice of every batch of the global order, built with the global
  batch (N ranks x batch b): the N·b examples of a step are those one process with batch N·b
  would take, in every epoch, with `group_by_length` too.
- `own_share` / `gather_shares`: work split across the ranks (the test answers), each rank
  taking every N-th item, gathered back on rank 0 in the original order.
- `Replica`: the model wrapped for the strategy of `train.strategy` (`sftkit.training.
  replicas`): DDP, or FSDP2.

The maths is one process's: the loss of a step is the sum of its token losses over every rank
divided by the *global* count of supervised tokens (all-reduced before backward), and the
gradients are summed across ranks, not averaged (`sum_gradients_hook`). The losses the
trainer records are all-reduced sums and counts.

Example (one process: no torchrun variables):
    >>> world = World.from_env({})
    >>> world.rank, world.size, world.is_main, world.is_distributed
    (0, 1, True, False)
    >>> World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).is_main
    False
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from sftkit.errors import SftkitError

#: How long a rank waits for the others at a collective (the baseline answers rank 0 writes
#: before training, or a sample after an epoch, keep the others waiting that long).
TIMEOUT = datetime.timedelta(hours=2)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """From torchrun's variables (`os.environ` by default)."""
        env = os.environ if env is None else env
        size = int(env.get("WORLD_SIZE", "1"))
        return cls(rank=int(env.get("RANK", "0")), size=size,
                   local_rank=int(env.get("LOCAL_RANK", "0")),
                   local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's `World`: from the process group when there is one, else torchrun's
    variables."""
    if dist.is_available() and dist.is_initialized():
        found = World.from_env()
        return World(dist.get_rank(), dist.get_world_size(), found.local_rank,
                     found.local_size)
    return World.from_env()


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return world().is_main


def setup(device_name: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes (idempotent); None without torchrun.

    The backend follows the device: NCCL when training runs on CUDA (each rank on
    `cuda:LOCAL_RANK`), gloo on the CPU. Torch's threads are the machine's cores shared among
    its ranks (torchrun's default of 1 thread would leave cores idle). Returns this rank's
    device."""
    place = World.from_env()
    if not place.is_distributed:
        return None
    on_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    device = torch.device("cuda", place.local_rank) if on_cuda else torch.device("cpu")
    if dist.is_initialized():
        return device
    if on_cuda:
        torch.cuda.set_device(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // place.local_size))
    try:
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=TIMEOUT,
                                device_id=device if on_cuda else None)
    except (RuntimeError, ValueError) as error:
        raise SftkitError(f"rank {place.rank} of {place.size} could not join the process "
                          f"group at {os.environ.get('MASTER_ADDR')}:"
                          f"{os.environ.get('MASTER_PORT')}: {error}") from error
    atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (at exit; idempotent). Whatever still holds it (a DDP wrapper
    and its reducer) is collected first, so that nothing uses the group after it is gone."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (it writes the files), then the others (they find them)."""
    main = is_main()
    if not main:
        barrier()
    yield
    if main:
        barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None
                   ) -> list[float]:
    """`values` summed over every rank, in float64 (unchanged in one process).

    >>> all_reduce_sum([1.5, 2])
    [1.5, 2.0]
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [float(value) for value in values]
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def own_share(items: Sequence[T]) -> list[T]:
    """This rank's share of `items` when the ranks split work between them: every N-th item
    from the rank's own (interleaved: the shares differ by one item at most, and neighbours,
    often alike in length, go to different ranks). One process: every item.

    >>> own_share(["a", "b", "c"])
    ['a', 'b', 'c']
    """
    place = world()
    return list(items[place.rank::place.size])


def gather_shares(share: Sequence[T]) -> list[T] | None:
    """On rank 0, every rank's `share` (of `own_share`) put back in the original order; None on
    the other ranks. Every rank calls it. One process: `share` itself.

    >>> gather_shares(["a", "b"])
    ['a', 'b']
    """
    place = world()
    if not place.is_distributed:
        return list(share)
    shares: list[Any] | None = [None] * place.size if place.is_main else None
    dist.gather_object(list(share), shares, dst=0)
    return None if shares is None else interleave(shares)


def interleave(shares: Sequence[Sequence[T]]) -> list[T]:
    """The items of `own_share`'s shares (of rank 0, 1, ...) in their original order.

    >>> interleave([["a", "c", "e"], ["b", "d"]])
    ['a', 'b', 'c', 'd', 'e']
    """
    longest = max((len(share) for share in shares), default=0)
    return [share[index] for index in range(longest) for share in shares
            if index < len(share)]


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank `rank`'s slice of every batch of `batches` (a sampler of the global batches);
    empty slices (the end of an unpadded last batch) are left out. `set_epoch` and `len`
    speak of the global batches, so progress and resuming count the same in any world.

    >>> from sftkit.data.dataset import EpochBatchSampler
    >>> rank1 = ShardedBatchSampler(EpochBatchSampler([1] * 5, 4, shuffle=False), 1, 2)
    >>> list(rank1), len(rank1)
    ([[2, 3]], 2)
    """

    def __init__(self, batches, rank: int, size: int):
        self.batches = batches
        self.rank = rank
        self.size = size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batches.set_epoch(epoch, skip=skip)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            share = -(-len(batch) // self.size)
            mine = batch[self.rank * share:(self.rank + 1) * share]
            if mine:
                yield mine

    def __len__(self) -> int:
        return len(self.batches)


def shard_loader(loader: DataLoader, place: World) -> DataLoader:
    """`loader` (built with the global batch size) reading only `place`'s slice of each
    batch; in one process, `loader` itself."""
    if not place.is_distributed:
        return loader
    return DataLoader(loader.dataset, batch_sampler=ShardedBatchSampler(
        loader.batch_sampler, place.rank, place.size), collate_fn=loader.collate_fn,
        num_workers=loader.num_workers, generator=loader.generator)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m sftkit *argv` on `nproc` processes of this machine through torchrun's
    own launcher (`torch.distributed.run`, at a free port); returns 0 when every rank
    succeeded. A rank that fails ends the job (torchrun stops the others): a `SftkitError`
    names it, with its exit code. A signal to this process (Ctrl-C, SIGTERM) ends every rank,
    each after the training step it is in and its checkpoint (torchrun sends them SIGTERM and
    waits 30 s before it kills them): a `SftkitError` names it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "sftkit", *argv])
    except SignalException as stop:  # Ctrl-C, or SIGTERM from a scheduler
        raise SftkitError(f"stopped by {stop.sigval.name}: torchrun ended the {nproc} "
                          "processes, which first finished their training step and saved it "
                          "(a checkpoint cut short is never published); run the same command "
                          "again to resume from the last checkpoint") from None
    except ChildFailedError as error:
        # Every failed rank: which one failed first is not always the one torchrun names
        # first (a rank that exits cleanly with an error code, then its peers' broken links).
        failed = "; ".join(f"rank {rank} exited with code {failure.exitcode}"
                           for rank, failure in sorted(error.failures.items()))
        raise SftkitError(f"training on {nproc} processes failed: {failed} (their errors are "
                          "above; torchrun stopped the others); run the same command again "
                          "to resume from the last checkpoint") from None
    return 0


def relaunched(nproc: int, argv: Sequence[str]) -> bool:
    """Launch `argv` on `nproc` processes unless this process is one already (or `nproc` is
    1); True when it did. The shortcut behind `--nproc N` of `sftkit train` and `run`."""
    if nproc < 1:
        raise SftkitError(f"--nproc must be >= 1, not {nproc}")
    if nproc == 1 or World.from_env().is_distributed:
        return False
    launch(nproc, argv)
    return True
