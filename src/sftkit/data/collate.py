"""Collate encoded examples into training batches — the one place where the label shift happens.

Step 7.3 of the reference, element for element: append one end-of-text token to every
example, pad with the pad id to the longest example in the batch + 1, take `inputs` = all but
the last position and `targets` = all but the first (the shift by one). In `targets` the first
end-of-text after each example is kept (it teaches the model to stop) and every later position
(padding) becomes `ignore_index` (-100, which `cross_entropy` skips). Optionally the prompt's
targets become -100 too (`mask_prompt`, the book's exercise 7.2), and both tensors are cut to
`allowed_max_length`.

Unlike the reference, padding is masked by position, not by value, so an end-of-text token
written inside a text is still trained on.

Example:
    >>> collate = Collator(pad_id=0, eos_id=9)
    >>> batch = collate([EncodedExample([5, 6, 7], 1), EncodedExample([5], 1)])
    >>> batch.inputs.tolist(), batch.targets.tolist()
    ([[5, 6, 7], [5, 9, 0]], [[6, 7, 9], [9, -100, -100]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized example: prompt + response ids (no end-of-text), and the prompt's length.

    `learned` (conversations) says for each of `ids` + the appended end-of-text whether it is
    learned; without it (Alpaca records) every token is, or, with `mask_prompt`, those after
    the prompt.

    >>> EncodedExample([5, 6, 7], 1).target_mask(mask_prompt=True)
    [True, True, True]
    >>> EncodedExample([5, 6, 7], 2, learned=(False, False, True, False)).target_mask(False)
    [False, True, False]
    """

    ids: list[int]
    prompt_length: int
    learned: tuple[bool, ...] | None = None

    def target_mask(self, mask_prompt: bool) -> list[bool]:
        """Whether each target is learned; target i is token i + 1 of ids + [end-of-text]."""
        if self.learned is not None:
            return list(self.learned[1:])
        # Targets 0 .. P-2 predict the prompt's own tokens 1 .. P-1.
        masked = max(self.prompt_length - 1, 0) if mask_prompt else 0
        return [index >= masked for index in range(len(self.ids))]

    def learned_targets(self, mask_prompt: bool, max_length: int | None = None) -> int:
        """How many targets are learned within the first `max_length` (the rest is cut)."""
        return sum(self.target_mask(mask_prompt)[:max_length])


class Batch(NamedTuple):
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where there is nothing to learn

    @property
    def supervised_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class Collator:
    """`collate_fn` for a DataLoader over `EncodedExample`s (a dataclass, so it pickles)."""

    pad_id: int
    eos_id: int
    ignore_index: int = IGNORE_INDEX
    allowed_max_length: int | None = None
    mask_prompt: bool = False

    def __call__(self, examples: Sequence[EncodedExample]) -> Batch:
        width = max(len(example.ids) for example in examples) + 1
        padded = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.ids)
            padded[row, :length] = torch.as_tensor(example.ids, dtype=torch.long)
            padded[row, length] = self.eos_id
        inputs = padded[:, :-1]
        targets = padded[:, 1:].clone()
        for row, example in enumerate(examples):
            # targets[length - 1] is the end-of-text; everything after it is padding.
            length = len(example.ids)
            targets[row, length:] = self.ignore_index
            learned = torch.tensor(example.target_mask(self.mask_prompt), dtype=torch.bool)
            targets[row, :length][~learned] = self.ignore_index
        if self.allowed_max_length is not None:
            inputs = inputs[:, : self.allowed_max_length]
            targets = targets[:, : self.allowed_max_length]
        return Batch(inputs.contiguous(), targets.contiguous())
