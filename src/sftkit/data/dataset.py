"""Tokenized instruction datasets, batch samplers and the train / validation / test loaders.

Example:
    >>> from sftkit.tokenizers import load_tokenizer
    >>> from sftkit.data.prompts import get_style
    >>> records = [{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4
    >>> data = InstructionDataset(records, load_tokenizer("gpt2"), get_style("alpaca"))
    >>> loader = make_loader(data, batch_size=2, shuffle=False)
    >>> batch = next(iter(loader))
    >>> tuple(batch.inputs.shape)
    (2, 35)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sftkit.data.collate import Collator, EncodedExample
from sftkit.data.prompts import PromptStyle
from sftkit.tokenizers import Tokenizer


def encode_example(
    record: Mapping[str, Any], tokenizer: Tokenizer, style: PromptStyle
) -> EncodedExample:
    """Tokenize prompt + response as one text (as the reference does) and find where the
    prompt ends: the length of the common prefix of the full text's and the prompt's ids."""
    ids = tokenizer.encode(style.format_example(record))
    prompt_ids = tokenizer.encode(style.format_prompt(record))
    prompt_length = 0
    for full_id, prompt_id in zip(ids, prompt_ids):
        if full_id != prompt_id:
            break
        prompt_length += 1
    return EncodedExample(ids=ids, prompt_length=prompt_length)


class InstructionDataset(Dataset):
    """Records formatted with a prompt style and tokenized once, up front."""

    def __init__(
        self, records: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, style: PromptStyle
    ):
        self.records = list(records)
        self.tokenizer = tokenizer
        self.style = style
        self.examples = [encode_example(record, tokenizer, style) for record in self.records]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        """Tokens per example including the appended end-of-text."""
        return [len(example.ids) + 1 for example in self.examples]


class EpochBatchSampler(Sampler[list[int]]):
    """Deterministic batches, reshuffled every epoch from `seed + epoch`.

    `group_by_length` shuffles, cuts the order into mega-batches of `group_size` batches,
    sorts each mega-batch by length and shuffles the resulting batches: examples of similar
    length share a batch (less padding) while the order stays random. `skip` drops the first
    batches of the current epoch, for resuming mid-epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        group_by_length: bool = False,
        group_size: int = 64,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.group_by_length = group_by_length
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def batches(self) -> list[list[int]]:
        count = len(self.lengths)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(count, generator=generator).tolist() if self.shuffle \
            else list(range(count))
        if self.group_by_length:
            span = self.batch_size * self.group_size
            order = [
                index
                for start in range(0, count, span)
                for index in sorted(order[start:start + span], key=self.lengths.__getitem__,
                                    reverse=True)
            ]
        batches = [order[start:start + self.batch_size]
                   for start in range(0, count, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.group_by_length and self.shuffle:
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in permutation]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.skip:]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        total = full if self.drop_last or rest == 0 else full + 1
        return max(total - self.skip, 0)


def make_loader(
    dataset: InstructionDataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    group_by_length: bool = False,
    seed: int = 123,
    allowed_max_length: int | None = None,
    mask_prompt: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of `Batch`es over `dataset` with an `EpochBatchSampler`."""
    sampler = EpochBatchSampler(
        dataset.lengths, batch_size, shuffle=shuffle, drop_last=drop_last,
        group_by_length=group_by_length, seed=seed,
    )
    collate = Collator(
        pad_id=dataset.tokenizer.pad_id, eos_id=dataset.tokenizer.eos_id,
        allowed_max_length=allowed_max_length, mask_prompt=mask_prompt,
    )
    # A generator of its own: otherwise every iter() draws a seed from the global RNG, and a
    # resumed run would see other dropout masks than an uninterrupted one.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed))


def padding_fraction(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], max_length: int | None = None
) -> float | None:
    """The share of input positions that are padding, over the given batches (None when there
    are no batches: nothing to measure).

    >>> round(padding_fraction([4, 2], [[0, 1]]), 4)  # 3 and 1 input tokens, padded to 3
    0.3333
    >>> padding_fraction([4, 2], []) is None
    True
    """
    real = total = 0
    for batch in batches:
        # Input width = longest example (without its end-of-text) in the batch, capped.
        token_counts = [lengths[i] - 1 for i in batch]
        width = max(token_counts)
        if max_length is not None:
            width = min(width, max_length)
        real += sum(min(count, width) for count in token_counts)
        total += width * len(batch)
    return 1.0 - real / total if total else None
