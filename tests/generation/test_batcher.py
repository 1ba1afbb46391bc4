"""Continuous batching: outputs token-identical to one-by-one generation with more prompts
than slots and very different lengths; per-row settings, seeds and constraints; requests that
join mid-batch or are cancelled."""

from __future__ import annotations

import pytest
import torch
from test_generation import TINY, tiny, uncached_greedy

from sftkit.errors import SftkitError
from sftkit.generation import ContinuousBatcher, GenerationConfig, generate

#: Lengths from 1 to 40 tokens: rows sit at very different positions of one cache.
PROMPTS = [[(7 * i + 3 * j) % 97 + 1 for j in range(length)]
           for i, length in enumerate((40, 1, 23, 3, 31, 2, 12, 5))]


def run(batcher: ContinuousBatcher, earlier=()) -> dict[int, tuple[list[int], str]]:
    """Step until idle: each request's tokens and done reason (`earlier`: events of steps
    already taken)."""
    tokens: dict[int, list[int]] = {}
    done: dict[int, str] = {}
    steps = [list(earlier)]
    while not batcher.idle:
        steps.append(batcher.step())
    for events in steps:
        for event in events:
            if event.token is not None:
                tokens.setdefault(event.request, []).append(event.token)
            if event.done is not None:
                done[event.request] = event.done
    return {request: (tokens.get(request, []), reason) for request, reason in done.items()}


@pytest.mark.parametrize("preset", list(TINY))
@pytest.mark.parametrize("slots", [1, 3])
def test_continuous_batching_equals_one_by_one(preset, slots):
    model = tiny(preset)
    config = GenerationConfig(max_new_tokens=14, batch_size=slots)
    batched = generate(model, PROMPTS, config)
    assert batched == [uncached_greedy(model, prompt, 14) for prompt in PROMPTS]
    assert len({tuple(out) for out in batched}) > 1
    # Rows ending at different steps (a stop token) hand their slots to waiting prompts.
    stop = batched[0][2]
    stopped = generate(model, PROMPTS, GenerationConfig(max_new_tokens=14, batch_size=slots,
                                                        stop_ids=(stop,)))
    assert stopped == [uncached_greedy(model, prompt, 14, (stop,)) for prompt in PROMPTS]
    assert len({len(out) for out in stopped}) > 1


def test_per_row_limits_and_done_reasons():
    model = tiny("gpt2")
    batcher = ContinuousBatcher(model, slots=2)
    free = generate(model, PROMPTS[:3], GenerationConfig(max_new_tokens=6))
    ids = [batcher.add(PROMPTS[0], GenerationConfig(max_new_tokens=6, stop_ids=(free[0][2],))),
           batcher.add(PROMPTS[1], GenerationConfig(max_new_tokens=2)),
           batcher.add(PROMPTS[2], GenerationConfig(max_new_tokens=0)),
           batcher.add(list(range(1, 62)), GenerationConfig(max_new_tokens=50))]
    results = run(batcher)
    assert results[ids[0]] == (free[0][:2], "stop")
    assert results[ids[1]] == (free[1][:2], "length")
    assert results[ids[2]] == ([], "length")
    assert len(results[ids[3]][0]) == 3 and results[ids[3]][1] == "length"  # the 64 context


def test_stop_strings_per_row():
    model = tiny("gpt2")
    decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)  # noqa: E731
    free = generate(model, PROMPTS[:2], GenerationConfig(max_new_tokens=8))
    stop = decode(free[0][2:4])
    batcher = ContinuousBatcher(model, slots=2, decode=decode)
    first = batcher.add(PROMPTS[0], GenerationConfig(max_new_tokens=8, stop_strings=(stop,)))
    second = batcher.add(PROMPTS[1], GenerationConfig(max_new_tokens=8))
    results = run(batcher)
    assert results[first] == (free[0][:4], "stop")
    assert results[second] == (free[1], "length")
    with pytest.raises(SftkitError, match="decode"):
        ContinuousBatcher(model, slots=1).add([1], GenerationConfig(stop_strings=("x",)))


def solo(model, prompt, config, constraint=None):
    batcher = ContinuousBatcher(model, slots=1)
    request = batcher.add(prompt, config, constraint)
    return run(batcher)[request]


@pytest.mark.parametrize("preset", list(TINY))
def test_a_seeded_row_is_reproducible_whatever_else_is_in_the_batch(preset):
    model = tiny(preset)
    sampled = GenerationConfig(max_new_tokens=10, temperature=1.5, top_k=20, seed=7)
    alone = solo(model, PROMPTS[2], sampled)
    batcher = ContinuousBatcher(model, slots=3)
    others = [batcher.add(PROMPTS[0], GenerationConfig(max_new_tokens=4)),
              batcher.add(PROMPTS[1], GenerationConfig(max_new_tokens=12, temperature=0.8,
                                                       top_p=0.9, seed=1))]
    earlier = batcher.step() + batcher.step()
    mine = batcher.add(PROMPTS[2], sampled)  # joins a running batch
    greedy = batcher.add(PROMPTS[3], GenerationConfig(max_new_tokens=10))
    results = run(batcher, earlier)
    assert results[mine] == alone
    assert results[greedy] == solo(model, PROMPTS[3], GenerationConfig(max_new_tokens=10))
    assert results[others[1]] == solo(model, PROMPTS[1], GenerationConfig(
        max_new_tokens=12, temperature=0.8, top_p=0.9, seed=1))
    other_seed = solo(model, PROMPTS[2], GenerationConfig(max_new_tokens=10, temperature=1.5,
                                                          top_k=20, seed=8))
    assert other_seed != alone


def test_seeded_generate_does_not_depend_on_the_batch_size():
    model = tiny("smollm2-135m")
    config = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=3)
    assert generate(model, PROMPTS, config) == generate(
        model, PROMPTS, GenerationConfig(max_new_tokens=8, temperature=1.5, seed=3,
                                         batch_size=2))


class AllowedTokens:
    """A tiny constraint: only `allowed` tokens, complete after `count` of them."""

    def __init__(self, allowed: set[int], count: int) -> None:
        self.allowed, self.count, self.taken = allowed, count, []

    def mask(self, logits: torch.Tensor) -> None:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[list(self.allowed)] = True
        logits.masked_fill_(~keep, float("-inf"))

    def advance(self, token: int) -> None:
        self.taken.append(token)

    def finished(self) -> bool:
        return len(self.taken) == self.count


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_constraint_masks_its_row_and_ends_it(temperature):
    model = tiny("gpt2")
    constraint = AllowedTokens({5, 17, 42}, count=3)
    batcher = ContinuousBatcher(model, slots=2)
    free = batcher.add(PROMPTS[0], GenerationConfig(max_new_tokens=6))
    constrained = batcher.add(PROMPTS[1], GenerationConfig(
        max_new_tokens=10, temperature=temperature, seed=0), constraint)
    results = run(batcher)
    tokens, reason = results[constrained]
    assert reason == "stop" and len(tokens) == 3 and set(tokens) <= {5, 17, 42}
    assert constraint.taken == tokens
    assert results[free] == solo(model, PROMPTS[0], GenerationConfig(max_new_tokens=6))


def test_repeat_penalty_changes_only_its_row():
    model = tiny("gpt2")
    plain = solo(model, [3, 3, 3], GenerationConfig(max_new_tokens=12))
    penalized = solo(model, [3, 3, 3], GenerationConfig(max_new_tokens=12, repeat_penalty=50.0))
    assert penalized != plain
    assert len(set(penalized[0])) > len(set(plain[0]))


def test_cancel_frees_the_slot_at_the_next_step():
    model = tiny("gpt2")
    batcher = ContinuousBatcher(model, slots=1)
    long = batcher.add(PROMPTS[0], GenerationConfig(max_new_tokens=20))
    waiting = batcher.add(PROMPTS[1], GenerationConfig(max_new_tokens=3))
    gone = batcher.add(PROMPTS[2], GenerationConfig(max_new_tokens=3))
    assert [event.request for event in batcher.step()] == [long]
    assert (batcher.active, batcher.waiting) == (1, 2)
    batcher.cancel(long)
    batcher.cancel(gone)
    events = batcher.step()
    assert [(event.request, event.done) for event in events] == [
        (gone, "cancelled"), (long, "cancelled"), (waiting, None)]
    results = run(batcher)
    assert results[waiting][0] == solo(model, PROMPTS[1],
                                       GenerationConfig(max_new_tokens=3))[0][1:]
