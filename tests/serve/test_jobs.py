"""How a job's reader ends and what its completion says (no model: the job alone)."""

from __future__ import annotations

import asyncio

from sftkit.generation import GenerationConfig
from sftkit.serve.jobs import Completion, Job


def _job(prompt_tokens: int, new_tokens: int, temperature: float = 0.0) -> Job:
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=temperature)
    return Job(list(range(prompt_tokens)), config)


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
    full = Completion.of(job, "ab", [5, 6], "length", started=job.created,
                         first_token_at=job.created)
    cut = Completion.of(job, "a", [5], "stop", started=job.created,
                        first_token_at=job.created)
    assert (full.prompt_tokens, full.completion_tokens, full.done_reason) == (3, 2, "length")
    assert (cut.completion_tokens, cut.done_reason) == (1, "stop")
    assert full.total_ns >= full.eval_ns >= 0
