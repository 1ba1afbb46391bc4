"""Which waiting jobs run together (no model: the queue alone), and how a job's reader ends."""

from __future__ import annotations

import asyncio
import threading

from sftkit.generation import GenerationConfig
from sftkit.serve.batching import JobQueue
from sftkit.serve.jobs import Completion, Job


def _job(prompt_tokens: int, new_tokens: int, temperature: float = 0.0) -> Job:
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=temperature)
    return Job(list(range(prompt_tokens)), config)


def _batches(queue: JobQueue) -> list[list[int]]:
    """Every batch until the queue is empty, as prompt lengths."""
    queue.close()
    found = []
    while batch := queue.next_batch():
        found.append([len(job.prompt_ids) for job in batch])
    return found


def test_greedy_jobs_share_a_batch_up_to_its_size():
    queue = JobQueue(max_batch=2, context_length=64)
    for length in (1, 2, 3, 4, 5):
        queue.put(_job(length, 8))
    assert _batches(queue) == [[1, 2], [3, 4], [5]]


def test_a_job_joins_only_if_every_row_keeps_its_tokens():
    """The batch's room is the context after its longest prompt."""
    queue = JobQueue(max_batch=8, context_length=32)
    queue.put(_job(4, 20))   # needs 24 positions
    queue.put(_job(16, 8))   # would leave the first row 16 of its 20 tokens: waits
    queue.put(_job(10, 4))   # room 22 >= 20 and >= 4: joins
    assert _batches(queue) == [[4, 10], [16]]


def test_sampled_jobs_run_alone_and_cancelled_ones_never_run():
    queue = JobQueue(max_batch=8, context_length=64)
    jobs = [_job(1, 4), _job(2, 4, temperature=1.0), _job(3, 4), _job(4, 4)]
    jobs[3].cancelled.set()
    for job in jobs:
        queue.put(job)
    assert _batches(queue) == [[1, 3], [2]]


def test_the_worker_waits_for_work():
    queue = JobQueue(max_batch=4, context_length=64)
    taken: list[int] = []
    worker = threading.Thread(target=lambda: taken.extend(map(len, iter(queue.next_batch, []))))
    worker.start()
    queue.put(_job(3, 4))
    queue.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and taken == [1]


def test_a_reader_that_stops_cancels_its_job():
    async def read_one_piece(job: Job) -> list[object]:
        job.connect()
        job.deliver("first")
        job.deliver("second")
        pieces = []
        async for item in job.results():
            pieces.append(item)
            break
        return pieces

    job = _job(3, 4)
    assert asyncio.run(read_one_piece(job)) == ["first"]
    assert job.cancelled.is_set()


def test_a_disconnected_client_ends_the_wait():
    async def wait(job: Job) -> list[object]:
        job.connect()

        async def gone() -> bool:
            return True

        return [item async for item in job.results(gone, poll_seconds=0.01)]

    job = _job(3, 4)
    assert asyncio.run(wait(job)) == [] and job.cancelled.is_set()


def test_a_completion_counts_the_tokens_and_says_why_it_ended():
    job = _job(3, 2)
    full = Completion.of(job, "ab", [5, 6], stopped=False, started=job.created,
                         first_token_at=job.created)
    cut = Completion.of(job, "a", [5], stopped=True, started=job.created,
                        first_token_at=job.created)
    assert (full.prompt_tokens, full.completion_tokens, full.done_reason) == (3, 2, "length")
    assert (cut.completion_tokens, cut.done_reason) == (1, "stop")
    assert full.total_ns >= full.eval_ns >= 0
