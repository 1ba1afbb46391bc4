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
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from sftkit.data.collate import Collator, EncodedExample
from sftkit.data.formats import ALPACA, DEFAULT_INPUT_SEPARATOR, record_format, record_messages
from sftkit.data.spans import RendersConversations, learned_char_spans, learned_token_flags
from sftkit.tokenizers import Tokenizer


def style_messages(record: Mapping[str, Any], style: RendersConversations) -> list[dict[str, str]]:
    """A record as a conversation; an Alpaca input joined the style's way (styles without
    their own way, such as a model's chat template, put a blank line between)."""
    return record_messages(record, getattr(style, "input_separator", DEFAULT_INPUT_SEPARATOR))


def record_text(record: Mapping[str, Any], style: RendersConversations,
                tokenizer: Tokenizer) -> str:
    """A record's whole training text, before the end-of-text the collator appends."""
    return before_final_end_of_text(style.render(style_messages(record, style)), tokenizer)


def before_final_end_of_text(text: str, tokenizer: Tokenizer) -> str:
    """`text` without a final end-of-text token (and what a template writes after it): the
    collator appends that token itself, so it would be learned twice, as in SmolLM2's
    `...<|im_end|>\\n` + `<|im_end|>`.

    Example:
        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> before_final_end_of_text("<|im_start|>assistant\\nHi.<|im_end|>\\n",
        ...                          smollm2_tokenizer())
        '<|im_start|>assistant\\nHi.'
    """
    end_of_text = tokenizer.decode([tokenizer.eos_id])
    at = text.rfind(end_of_text) if end_of_text else -1
    if at < 0 or text[at + len(end_of_text):].strip():
        return text
    return text[:at]


def encode_example(record: Mapping[str, Any], tokenizer: Tokenizer,
                   style: RendersConversations, loss_on: str = "assistant") -> EncodedExample:
    """Tokenize a record's whole text at once (as the reference does).

    An Alpaca record keeps the book's recipe: the prompt ends where the ids of the full text
    and of the prompt alone first differ, and `mask_prompt` decides in the collator. A
    conversation's learned tokens are found from token offsets (`sftkit.data.spans`); the
    appended end-of-text is learned when the conversation's last token is. A text that ends
    with the end-of-text token already (a chat template's end of turn) ends before it instead,
    so the token is learned once.
    """
    messages = style_messages(record, style)
    if record_format(record) == ALPACA:
        ids = tokenizer.encode(before_final_end_of_text(style.render(messages), tokenizer))
        prompt_ids = tokenizer.encode(style.render(messages[:-1], add_generation_prompt=True))
        prompt_length = 0
        for full_id, prompt_id in zip(ids, prompt_ids):
            if full_id != prompt_id:
                break
            prompt_length += 1
        return EncodedExample(ids=ids, prompt_length=prompt_length)
    text, spans = learned_char_spans(messages, style, loss_on)
    text = before_final_end_of_text(text, tokenizer)
    ids, offsets = tokenizer.encode_with_offsets(text)
    flags = learned_token_flags(offsets, spans)
    learned = (*flags, bool(flags) and flags[-1])
    return EncodedExample(ids=ids, prompt_length=learned.index(True) if any(learned)
                          else len(ids), learned=learned)


class InstructionDataset(Dataset):
    """Records (any format) rendered with a prompt style and tokenized once, up front.

    `loss_on` (`assistant`, `last_assistant`, `all`) says what conversation records learn;
    Alpaca records follow the loader's `mask_prompt`.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer: Tokenizer,
                 style: RendersConversations, *, loss_on: str = "assistant"):
        self.records = list(records)
        self.tokenizer = tokenizer
        self.style = style
        self.loss_on = loss_on
        self.examples = [encode_example(record, tokenizer, style, loss_on)
                         for record in self.records]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        """Tokens per example including the appended end-of-text."""
        return [len(example.ids) + 1 for example in self.examples]

    def unlearnable(self, mask_prompt: bool, max_length: int | None) -> list[int]:
        """Indices of the examples with no learned target left once cut to `max_length`
        (the learned part truncated away, or empty): loaders leave them out."""
        return [index for index, example in enumerate(self.examples)
                if not example.learned_targets(mask_prompt, max_length)]

    def learnable(self, mask_prompt: bool, max_length: int | None) -> list[int]:
        """Indices of the examples the loaders train on: all but the `unlearnable` ones."""
        dropped = set(self.unlearnable(mask_prompt, max_length))
        return [index for index in range(len(self)) if index not in dropped]


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
    """A DataLoader of `Batch`es over `dataset` with an `EpochBatchSampler`.

    Examples with nothing to learn within `allowed_max_length` (see
    `InstructionDataset.unlearnable`) are left out: an all-masked row adds no loss, only cost
    (`sftkit prepare` reports them)."""
    kept = dataset.learnable(mask_prompt, allowed_max_length)
    source: Dataset = Subset(dataset, kept) if len(kept) < len(dataset) else dataset
    lengths = dataset.lengths
    sampler = EpochBatchSampler(
        [lengths[index] for index in kept], batch_size, shuffle=shuffle,
        drop_last=drop_last, group_by_length=group_by_length, seed=seed,
    )
    collate = Collator(
        pad_id=dataset.tokenizer.pad_id, eos_id=dataset.tokenizer.eos_id,
        allowed_max_length=allowed_max_length, mask_prompt=mask_prompt,
    )
    # A generator of its own: otherwise every iter() draws a seed from the global RNG, and a
    # resumed run would see other dropout masks than an uninterrupted one.
    return DataLoader(source, batch_sampler=sampler, collate_fn=collate,
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
