"""Packing: whole examples side by side in fixed-length rows, each attending only to itself.

Unpacked batches pad every example to the longest of its batch; with long-tailed lengths most
of a batch is padding. Packing fills rows of `row_length` tokens (`data.max_length`) with whole
examples instead:

- Each example is first collated alone by the unpacked `Collator` (so its targets are exactly
  the unpacked ones: the shift by one inside the example, its end-of-text learned, prompt
  masking, truncation to `row_length`). It occupies `len(ids)` positions (at most
  `row_length`): its inputs. Its end-of-text is a target, never an input, so no position's
  target comes from the next example in the row.
- Rows are filled greedily, first fit: examples in a seeded random order, then stably sorted
  longest first (first-fit decreasing: the big ones placed while there is room), each put
  into the first row with space left. The packing is computed once per loader, so every
  epoch has the same rows (the loader's sampler reshuffles their order per epoch): the number
  of steps is fixed and a resumed run sees the same batches.
- Every batch carries `positions` (restarting at 0 for each example) and `document_ids`
  (0, 1, ... per example in a row; the padding at the end of a row is a document of its own,
  with -100 targets). The models turn them into per-example positions and a block-diagonal
  causal mask (`sftkit.models.base.packed_attention_mask`).
- A batch is as wide as its fullest row (at most `row_length`): the padding after it would
  change nothing but the work.

`train.batch_size` counts rows when packing.

Example:
    >>> from sftkit.data.collate import Collator, EncodedExample
    >>> examples = [EncodedExample([5, 6, 7], 1), EncodedExample([8, 9], 1),
    ...             EncodedExample([4], 1)]
    >>> rows = pack_rows([3, 2, 1], row_length=4, seed=0)
    >>> rows
    [[0, 2], [1]]
    >>> collate = PackedCollator(Collator(pad_id=0, eos_id=99, allowed_max_length=4))
    >>> batch = collate([[examples[i] for i in row] for row in rows])
    >>> batch.inputs.tolist(), batch.targets.tolist()
    ([[5, 6, 7, 4], [8, 9, 0, 0]], [[6, 7, 99, 99], [9, 99, -100, -100]])
    >>> batch.positions.tolist(), batch.document_ids.tolist(), batch.examples
    ([[0, 1, 2, 0], [0, 1, 0, 1]], [[0, 0, 0, 1], [0, 0, 1, 1]], 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from sftkit.data.collate import IGNORE_INDEX, Batch, Collator, EncodedExample
from sftkit.data.dataset import EpochBatchSampler, InstructionDataset


class PackedBatch(NamedTuple):
    """A batch of packed rows: `inputs`/`targets` as in `Batch`, plus where each token sits."""

    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where there is nothing to learn
    positions: torch.Tensor  # (B, T) int64, each token's position in its own example
    document_ids: torch.Tensor  # (B, T) int64, which example of its row a token belongs to
    examples: int  # whole examples in the batch (padding not counted)

    @property
    def supervised_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def pack_rows(lengths: Sequence[int], row_length: int, seed: int) -> list[list[int]]:
    """Example indices per row: first-fit decreasing over a seeded order; `lengths` are the
    positions each example takes (longer ones are cut to `row_length` first).

    >>> pack_rows([4, 1, 3, 2, 2], row_length=4, seed=0)
    [[0], [2, 1], [4, 3]]
    """
    if row_length < 1:
        raise ValueError(f"row_length must be >= 1, got {row_length}")
    sizes = [min(length, row_length) for length in lengths]
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist()
    order.sort(key=lambda index: -sizes[index])  # stable: equal sizes keep the seeded order
    space = _RowSpace(len(sizes), row_length)
    rows: list[list[int]] = []
    for index in order:
        row = space.first_fit(sizes[index])
        if row == len(rows):
            rows.append([])
        rows[row].append(index)
    return rows


class _RowSpace:
    """Space left in each row, in a max segment tree, so the first row with room for `size`
    is found in O(log rows) (a plain scan is quadratic on a large data set)."""

    def __init__(self, max_rows: int, row_length: int):
        self.leaves = 1
        while self.leaves < max(max_rows, 1):
            self.leaves *= 2
        self.tree = [row_length] * (2 * self.leaves)

    def first_fit(self, size: int) -> int:
        """Take `size` positions from the first row that has them; return its index."""
        node = 1
        while node < self.leaves:
            node = 2 * node if self.tree[2 * node] >= size else 2 * node + 1
        self.tree[node] -= size
        row = node - self.leaves
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return row


@dataclass(frozen=True)
class PackedCollator:
    """`collate_fn` for rows of `EncodedExample`s: each example collated alone by `collator`
    (the unpacked one, whose `allowed_max_length` is the row length), then laid end to end."""

    collator: Collator

    def __call__(self, rows: Sequence[Sequence[EncodedExample]]) -> PackedBatch:
        segments = [[self._segment(example) for example in row] for row in rows]
        width = max(sum(len(inputs) for inputs, _ in row) for row in segments)
        shape = (len(rows), width)
        inputs = torch.full(shape, self.collator.pad_id, dtype=torch.long)
        targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        document_ids = torch.zeros(shape, dtype=torch.long)
        for row, row_segments in enumerate(segments):
            start = 0
            for document, (segment_inputs, segment_targets) in enumerate(row_segments):
                end = start + len(segment_inputs)
                inputs[row, start:end] = segment_inputs
                targets[row, start:end] = segment_targets
                positions[row, start:end] = torch.arange(end - start)
                document_ids[row, start:end] = document
                start = end
            # The padding after the last example: a document of its own, attending to itself.
            positions[row, start:] = torch.arange(width - start)
            document_ids[row, start:] = len(row_segments)
        examples = sum(len(row) for row in rows)
        return PackedBatch(inputs, targets, positions, document_ids, examples)

    def _segment(self, example: EncodedExample) -> tuple[torch.Tensor, torch.Tensor]:
        """The example's unpacked inputs and targets, without the end-of-text input that
        only a batch's shorter rows get (its target is -100)."""
        batch: Batch = self.collator([example])
        length = min(len(example.ids), batch.inputs.shape[1])
        return batch.inputs[0, :length], batch.targets[0, :length]


class PackedRows(Dataset):
    """The rows of `pack_rows` over an `InstructionDataset`: item i is row i's examples.
    Examples with nothing to learn in a row are left out, as `make_loader` leaves them out."""

    def __init__(self, dataset: InstructionDataset, row_length: int, seed: int, *,
                 mask_prompt: bool = False):
        self.dataset = dataset
        kept = dataset.learnable(mask_prompt, row_length)
        lengths = dataset.lengths
        # An example takes len(ids) positions (its end-of-text is only a target).
        sizes = [min(lengths[index] - 1, row_length) for index in kept]
        packed = pack_rows(sizes, row_length, seed)
        self.rows = [[kept[slot] for slot in row] for row in packed]
        self.row_lengths = [sum(sizes[slot] for slot in row) for row in packed]
        """Tokens in each row (the rest of a full-width row would be padding)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list[EncodedExample]:
        return [self.dataset[example] for example in self.rows[index]]


def make_packed_loader(
    dataset: InstructionDataset,
    batch_size: int,
    row_length: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 123,
    mask_prompt: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of `PackedBatch`es of `batch_size` rows of up to `row_length` tokens,
    with an `EpochBatchSampler` over the rows (the same as `make_loader`'s, so resuming works
    the same way).

    Example:
        >>> from sftkit.tokenizers import load_tokenizer
        >>> from sftkit.data.prompts import get_style
        >>> records = [{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4
        >>> data = InstructionDataset(records, load_tokenizer("gpt2"), get_style("alpaca"))
        >>> batch = next(iter(make_packed_loader(data, 1, row_length=100, shuffle=False)))
        >>> tuple(batch.inputs.shape), batch.examples, batch.document_ids[0].unique().tolist()
        ((1, 70), 2, [0, 1])
    """
    rows = PackedRows(dataset, row_length, seed, mask_prompt=mask_prompt)
    sampler = EpochBatchSampler([row_length] * len(rows), batch_size, shuffle=shuffle,
                                drop_last=drop_last, seed=seed)
    collate = PackedCollator(Collator(
        pad_id=dataset.tokenizer.pad_id, eos_id=dataset.tokenizer.eos_id,
        allowed_max_length=row_length, mask_prompt=mask_prompt))
    return DataLoader(rows, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))
