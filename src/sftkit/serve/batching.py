"""The jobs waiting for the engine's worker, and which of them run together.

The oldest job goes first. Greedy jobs waiting behind a greedy one join its batch when every
row still gets all the tokens it asked for: greedy output does not depend on the batch (left
padding is masked), so each client gets the answer it would get alone. Sampled jobs run alone,
so a seed reproduces its answer. Jobs whose client went away are dropped unrun.

Example:
    >>> from sftkit.generation import GenerationConfig
    >>> queue = JobQueue(max_batch=4, context_length=32)
    >>> greedy = [Job([1, 2], GenerationConfig(max_new_tokens=8)) for _ in range(3)]
    >>> sampled = Job([1, 2], GenerationConfig(max_new_tokens=8, temperature=1.0))
    >>> for job in (greedy[0], sampled, greedy[1], greedy[2]):
    ...     queue.put(job)
    >>> greedy[2].cancelled.set()  # its client went away
    >>> queue.close()  # no more jobs: the worker may stop once these are done
    >>> [len(queue.next_batch()) for _ in range(3)]
    [2, 1, 0]
"""

from __future__ import annotations

import collections
import logging
import threading

from sftkit.serve.jobs import Job

log = logging.getLogger("sftkit.serve")


class JobQueue:
    """Jobs waiting in order; `next_batch` blocks the worker until there is work or `close`."""

    def __init__(self, *, max_batch: int, context_length: int):
        self.max_batch = max_batch
        self.context_length = context_length
        self._waiting: collections.deque[Job] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, job: Job) -> None:
        with self._changed:
            self._waiting.append(job)
            self._changed.notify()

    def close(self) -> None:
        """Let the worker finish: `next_batch` returns [] once the queue is empty."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def next_batch(self) -> list[Job]:
        """The oldest waiting job, with the greedy jobs that can share its batch; [] at close."""
        with self._changed:
            while True:
                while self._waiting and self._waiting[0].cancelled.is_set():
                    self._waiting.popleft()
                    log.info("skipped a queued request: its client went away")
                if self._waiting:
                    break
                if self._closed:
                    return []
                self._changed.wait()
            batch = [self._waiting.popleft()]
            if batch[0].config.temperature == 0:
                for job in list(self._waiting):
                    if len(batch) < self.max_batch and self._fits(batch, job):
                        self._waiting.remove(job)
                        batch.append(job)
            return batch

    def _fits(self, batch: list[Job], job: Job) -> bool:
        """Whether `job` can join `batch` without any row getting fewer tokens than alone: the
        batch's room is the context after its longest prompt."""
        if job.cancelled.is_set() or job.config.temperature != 0:
            return False
        rows = [*batch, job]
        room = self.context_length - max(len(row.prompt_ids) for row in rows)
        return all(row.config.max_new_tokens <= room for row in rows)
