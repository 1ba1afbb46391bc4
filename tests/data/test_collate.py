"""Collate: literal tensors, equality with the reference recipe, and invariants."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.data.collate import IGNORE_INDEX, Collator, EncodedExample

X = IGNORE_INDEX


def reference_collate(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None):
    """Step 7.3 as the book describes it: value-based masking of every padding token after the
    first (written here from the description, as the oracle for our positional version)."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_rows, target_rows = [], []
    for item in batch:
        new_item = list(item) + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])
        pad_positions = torch.nonzero(targets == pad_token_id).flatten()
        if pad_positions.numel() > 1:
            targets[pad_positions[1:]] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_rows.append(inputs)
        target_rows.append(targets)
    return torch.stack(inputs_rows), torch.stack(target_rows)


def test_literal_batch():
    collate = Collator(pad_id=0, eos_id=99)
    batch = collate([EncodedExample([1, 2, 3, 4, 5], 2), EncodedExample([6, 7], 1),
                     EncodedExample([8, 9, 10], 3)])
    assert batch.inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, 99, 0, 0], [8, 9, 10, 99, 0]]
    assert batch.targets.tolist() == [[2, 3, 4, 5, 99], [7, 99, X, X, X], [9, 10, 99, X, X]]
    assert batch.inputs.dtype == batch.targets.dtype == torch.long
    assert batch.supervised_tokens == 5 + 2 + 3


def test_literal_batch_prompt_masked():
    collate = Collator(pad_id=0, eos_id=99, mask_prompt=True)
    batch = collate([EncodedExample([1, 2, 3, 4, 5], 2), EncodedExample([6, 7], 1),
                     EncodedExample([8, 9, 10], 3)])
    # Prompt of length P: targets[0 .. P-2] (predicting prompt tokens) are ignored.
    assert batch.targets.tolist() == [[X, 3, 4, 5, 99], [7, 99, X, X, X], [X, X, 99, X, X]]


def test_literal_batch_truncated():
    collate = Collator(pad_id=0, eos_id=99, allowed_max_length=3)
    batch = collate([EncodedExample([1, 2, 3, 4, 5], 2), EncodedExample([6], 1)])
    assert batch.inputs.tolist() == [[1, 2, 3], [6, 99, 0]]
    assert batch.targets.tolist() == [[2, 3, 4], [99, X, X]]


def test_encoded_example_finds_the_prompt(char_tokenizer):
    from sftkit.data.dataset import encode_example
    from sftkit.data.prompts import get_style

    style = get_style("alpaca")
    record = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    example = encode_example(record, char_tokenizer, style)
    assert char_tokenizer.decode(example.ids) == style.format_example(record)
    assert example.prompt_length == len(style.format_prompt(record))
    batch = Collator(pad_id=0, eos_id=99, mask_prompt=True)([example])
    supervised = batch.targets[0][batch.targets[0] != X].tolist()
    assert supervised == char_tokenizer.encode("Hi.") + [99]


def test_equals_reference_on_real_gpt2_batch():
    from sftkit.data.dataset import InstructionDataset
    from sftkit.data.prompts import get_style
    from sftkit.tokenizers import gpt2_tokenizer

    records = [
        {"instruction": "Convert 45 kilometers to meters.", "input": "",
         "output": "45 kilometers is 45000 meters."},
        {"instruction": "Identify the correct spelling of the following word.",
         "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"},
        {"instruction": "Provide a synonym for 'bright'.", "input": "",
         "output": "A synonym for 'bright' is 'radiant'."},
    ]
    dataset = InstructionDataset(records, gpt2_tokenizer(), get_style("alpaca"))
    items = [example.ids for example in dataset.examples]
    for max_length in (None, 1024, 20):
        ours = Collator(pad_id=50256, eos_id=50256, allowed_max_length=max_length)(
            dataset.examples)
        inputs, targets = reference_collate(items, allowed_max_length=max_length)
        assert torch.equal(ours.inputs, inputs)
        assert torch.equal(ours.targets, targets)


token_lists = st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=12), min_size=1,
                       max_size=6)


@settings(max_examples=200, deadline=None)
@given(items=token_lists, data=st.data())
def test_matches_reference_on_random_batches(items, data):
    max_length = data.draw(st.one_of(st.none(), st.integers(1, 15)))
    ours = Collator(pad_id=0, eos_id=0, allowed_max_length=max_length)(
        [EncodedExample(item, 0) for item in items])
    inputs, targets = reference_collate(items, pad_token_id=0, allowed_max_length=max_length)
    assert torch.equal(ours.inputs, inputs)
    assert torch.equal(ours.targets, targets)


@settings(max_examples=200, deadline=None)
@given(items=token_lists, data=st.data())
def test_invariants(items, data):
    prompt_lengths = [data.draw(st.integers(0, len(item))) for item in items]
    mask_prompt = data.draw(st.booleans())
    examples = [EncodedExample(item, p) for item, p in zip(items, prompt_lengths)]
    batch = Collator(pad_id=0, eos_id=99, mask_prompt=mask_prompt)(examples)
    longest = max(len(item) for item in items)
    assert batch.inputs.shape == batch.targets.shape == (len(items), longest)
    for row, (item, prompt_length) in enumerate(zip(items, prompt_lengths)):
        inputs, targets = batch.inputs[row].tolist(), batch.targets[row].tolist()
        assert inputs[: len(item)] == item
        assert all(token == 0 for token in inputs[len(item) + 1:])
        # Shift by one: every supervised target is the next input (or the end-of-text).
        full = item + [99]
        for position, target in enumerate(targets):
            if target != X:
                assert target == full[position + 1]
        assert targets[len(item) - 1] == 99  # the first end-of-text is learned
        assert all(target == X for target in targets[len(item):])
        masked = max(prompt_length - 1, 0) if mask_prompt else 0
        assert all(target == X for target in targets[:masked])
        assert targets[masked: len(item)] == full[masked + 1: len(item) + 1]
