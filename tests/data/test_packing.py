"""Packing: whole examples in rows, each once, deterministically; per-example targets equal
the unpacked collate's; positions restart per example; the row's padding is its own document."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.data.collate import IGNORE_INDEX, Collator, EncodedExample
from sftkit.data.dataset import InstructionDataset
from sftkit.data.packing import PackedCollator, make_packed_loader, pack_rows
from sftkit.data.prompts import get_style


def examples(lengths, seed=0):
    rng = random.Random(seed)
    return [EncodedExample([rng.randrange(1, 90) for _ in range(n)], rng.randrange(0, n + 1))
            for n in lengths]


@given(st.lists(st.integers(1, 40), max_size=60), st.integers(1, 32), st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_every_example_lands_whole_in_exactly_one_row(lengths, row_length, seed):
    rows = pack_rows(lengths, row_length, seed)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], row_length) for i in row) <= row_length for row in rows)
    assert pack_rows(lengths, row_length, seed) == rows  # deterministic


def test_first_fit_decreasing_fills_rows():
    # Longest first, each into the first row with room: 6 + 4, 5 + 3 + 2, 1.
    rows = pack_rows([6, 5, 4, 3, 2, 1], row_length=10, seed=0)
    assert [sorted(row) for row in rows] == [[0, 2], [1, 3, 4], [5]]


def test_the_seed_changes_the_order_of_equal_lengths_only():
    lengths = [3] * 8
    assert pack_rows(lengths, 6, seed=1) != pack_rows(lengths, 6, seed=2)
    assert len(pack_rows(lengths, 6, seed=1)) == len(pack_rows(lengths, 6, seed=2)) == 4


def test_each_segment_has_the_unpacked_targets_positions_and_its_own_document():
    collator = Collator(pad_id=0, eos_id=99, allowed_max_length=12, mask_prompt=True)
    row = examples([5, 3, 2], seed=3)
    batch = PackedCollator(collator)([row])
    start = 0
    for document, example in enumerate(row):
        alone = collator([example])
        end = start + len(example.ids)
        assert batch.inputs[0, start:end].tolist() == example.ids
        assert batch.targets[0, start:end].tolist() == alone.targets[0].tolist()
        assert batch.targets[0, end - 1] == 99  # its own end-of-text, not the next example
        assert batch.positions[0, start:end].tolist() == list(range(end - start))
        assert batch.document_ids[0, start:end].tolist() == [document] * (end - start)
        start = end
    assert start == batch.inputs.shape[1] == 10  # as wide as its fullest row


def test_padding_is_a_document_of_its_own_with_nothing_to_learn():
    collate = PackedCollator(Collator(pad_id=0, eos_id=99, allowed_max_length=8))
    batch = collate([examples([6]), examples([2, 1])])
    assert batch.inputs.shape == (2, 6)
    assert batch.document_ids[1].tolist() == [0, 0, 1, 2, 2, 2]
    assert batch.positions[1].tolist() == [0, 1, 0, 0, 1, 2]
    assert batch.targets[1, 3:].tolist() == [IGNORE_INDEX] * 3
    assert batch.inputs[1, 3:].tolist() == [0] * 3
    assert batch.examples == 3
    assert batch.supervised_tokens == 6 + 3


def test_an_example_longer_than_a_row_is_truncated_as_unpacked():
    collator = Collator(pad_id=0, eos_id=99, allowed_max_length=4)
    long = examples([7])[0]
    batch = PackedCollator(collator)([[long]])
    alone = collator([long])
    assert torch.equal(batch.inputs, alone.inputs)
    assert torch.equal(batch.targets, alone.targets)
    assert pack_rows([7, 4], row_length=4, seed=0) in ([[0], [1]], [[1], [0]])


def test_the_loader_packs_once_and_reshuffles_rows_per_epoch(char_tokenizer):
    records = [{"instruction": "Say " + "a" * (i % 7), "input": "", "output": "b" * (i % 5)}
               for i in range(30)]
    data = InstructionDataset(records, char_tokenizer, get_style("alpaca"))
    loader = make_packed_loader(data, batch_size=2, row_length=400, shuffle=True, seed=5)

    def epoch(number):
        loader.batch_sampler.set_epoch(number)
        # Each row without the padding (id 0) that its batch's width gave it.
        return [str(row[:sum(token != 0 for token in row)])
                for batch in loader for row in batch.inputs.tolist()]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert first == again
    assert first != second
    assert sorted(first) == sorted(second)  # the same rows, reordered
    assert sum(batch.examples for batch in loader) == 30
