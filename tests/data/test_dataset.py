"""Datasets, the epoch batch sampler and loaders."""

from __future__ import annotations

import pytest

from sftkit.data.dataset import (
    EpochBatchSampler,
    InstructionDataset,
    make_loader,
    padding_fraction,
)
from sftkit.data.prompts import get_style


def test_sampler_is_deterministic_and_covers_everything():
    lengths = list(range(1, 51))
    sampler = EpochBatchSampler(lengths, 8, shuffle=True, seed=3)
    first = list(sampler)
    assert first == list(EpochBatchSampler(lengths, 8, shuffle=True, seed=3))
    assert sorted(i for batch in first for i in batch) == list(range(50))
    assert len(sampler) == len(first) == 7
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_drop_last_and_skip():
    sampler = EpochBatchSampler(list(range(50)), 8, shuffle=True, drop_last=True, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 and all(len(b) == 8 for b in batches)
    sampler.set_epoch(0, skip=4)
    assert list(sampler) == batches[4:] and len(sampler) == 2


def test_no_shuffle_keeps_order():
    sampler = EpochBatchSampler([5] * 5, 2, shuffle=False)
    assert list(sampler) == [[0, 1], [2, 3], [4]]


def test_length_grouping_cuts_padding_and_stays_random():
    lengths = [(i * 37) % 100 + 2 for i in range(400)]
    random_batches = EpochBatchSampler(lengths, 8, seed=1).batches()
    grouped = EpochBatchSampler(lengths, 8, group_by_length=True, seed=1)
    grouped_batches = grouped.batches()
    assert sorted(i for b in grouped_batches for i in b) == list(range(400))
    assert padding_fraction(lengths, grouped_batches) < padding_fraction(
        lengths, random_batches) / 4
    grouped.set_epoch(1)
    assert grouped.batches() != grouped_batches


def test_padding_fraction_literal():
    # Inputs exclude the final end-of-text: widths 3 → 1 - (3 + 1) / (2 * 3).
    assert padding_fraction([4, 2], [[0, 1]]) == pytest.approx(1 - 4 / 6)
    assert padding_fraction([4, 2], [[0, 1]], max_length=2) == pytest.approx(1 - 3 / 4)


def test_loader_yields_batches(char_tokenizer):
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi" + "!" * i}
               for i in range(10)]
    dataset = InstructionDataset(records, char_tokenizer, get_style("alpaca"))
    loader = make_loader(dataset, 4, shuffle=True, drop_last=True, mask_prompt=True,
                         allowed_max_length=1000)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch.inputs.shape[0] == 4 and batch.inputs.shape[1] <= 1000
        # With the prompt masked, only the answer and its end-of-text are supervised.
        for row in batch.targets:
            supervised = [t for t in row.tolist() if t != -100]
            assert char_tokenizer.decode(supervised[:2]) == "Hi" and supervised[-1] == 99
