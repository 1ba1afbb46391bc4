"""What `sftkit prepare` reports about a dataset: split sizes, token lengths, truncation and
the padding a batch size costs, with and without length-grouped batches, and notes naming the
records worth a look."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftkit.data.dataset import EpochBatchSampler, InstructionDataset, padding_fraction
from sftkit.data.records import RecordReport, Splits

PERCENTILES = (50, 90, 95, 99)


def _percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Percentiles, min, max and mean of a non-empty list of token counts.

    >>> length_stats([3, 1, 2, 10])
    {'p50': 2, 'p90': 10, 'p95': 10, 'p99': 10, 'min': 1, 'max': 10, 'mean': 4.0}
    """
    ordered = sorted(lengths)
    stats: dict[str, float] = {f"p{p}": _percentile(ordered, p) for p in PERCENTILES}
    stats["min"] = ordered[0]
    stats["max"] = ordered[-1]
    stats["mean"] = round(sum(ordered) / len(ordered), 1)
    return stats


def over_length_indices(datasets: Mapping[str, InstructionDataset],
                        indices: Mapping[str, Sequence[int]], max_length: int | None) -> list[int]:
    """Source indices of the examples longer than `max_length` (truncated in training); token
    lengths count the appended end-of-text token, which the shifted inputs drop."""
    if max_length is None:
        return []
    return sorted(index for name, dataset in datasets.items()
                  for index, length in zip(indices[name], dataset.lengths)
                  if length - 1 > max_length)


def unlearnable_indices(datasets: Mapping[str, InstructionDataset],
                        indices: Mapping[str, Sequence[int]], mask_prompt: bool,
                        max_length: int | None) -> list[int]:
    """Source indices of the examples whose learned part is cut away by `max_length` or
    empty: training leaves them out (see `make_loader`)."""
    return sorted(indices[name][i] for name, dataset in datasets.items()
                  for i in dataset.unlearnable(mask_prompt, max_length))


def summarize(
    splits: Splits,
    datasets: dict[str, InstructionDataset],
    report: RecordReport,
    *,
    batch_size: int = 8,
    max_length: int | None = 1024,
    seed: int = 123,
) -> dict[str, Any]:
    """A JSON-ready summary (no NaN: what cannot be measured is None, and a note says why)."""
    all_lengths = [n for dataset in datasets.values() for n in dataset.lengths]
    train_lengths = datasets["train"].lengths
    padding = {}
    for grouped in (False, True):
        sampler = EpochBatchSampler(train_lengths, batch_size, shuffle=True, drop_last=True,
                                    group_by_length=grouped, seed=seed)
        fraction = padding_fraction(train_lengths, sampler.batches(), max_length)
        padding["length_grouped" if grouped else "random"] = (
            None if fraction is None else round(fraction, 4))
    sizes = {name: len(records) for name, records in splits.items()}
    return {
        "records": report.total,
        "splits": sizes,
        "tokenizer": datasets["train"].tokenizer.name,
        "style": datasets["train"].style.name,
        "token_lengths": length_stats(all_lengths),
        "max_length": max_length,
        "over_max_length": len(report.over_max_length),
        "unlearnable": len(report.unlearnable),
        "batch_size": batch_size,
        "padding_fraction": None if padding["random"] is None else padding,
        "empty_instructions": len(report.empty_instructions),
        "empty_outputs": len(report.empty_outputs),
        "duplicates": len(report.duplicates),
        "conflicting_duplicates": len(report.conflicting),
        "notes": split_notes(sizes, batch_size) + report.warnings(),
    }


def split_notes(sizes: Mapping[str, int], batch_size: int) -> list[str]:
    """What the split sizes mean for the later stages.

    >>> for note in split_notes({"train": 5, "val": 1, "test": 0}, batch_size=8):
    ...     print(note)
    the train split (5 records) is smaller than one batch of 8: padding is not measured, and \
training needs a smaller batch size (train.batch_size) or more records
    the test split is empty: nothing to generate answers for or evaluate
    """
    notes = []
    if sizes["train"] < batch_size:
        notes.append(f"the train split ({sizes['train']} records) is smaller than one batch of "
                     f"{batch_size}: padding is not measured, and training needs a smaller "
                     "batch size (train.batch_size) or more records")
    if not sizes["val"]:
        notes.append("the validation split is empty: no validation loss during training")
    if not sizes["test"]:
        notes.append("the test split is empty: nothing to generate answers for or evaluate")
    return notes


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few aligned lines for the terminal, then its notes."""
    splits = summary["splits"]
    lengths = summary["token_lengths"]
    percentiles = "  ".join(f"p{p} {lengths[f'p{p}']}" for p in PERCENTILES)
    rows = [
        ("records", f"{summary['records']}  (train {splits['train']}, val {splits['val']}, "
                    f"test {splits['test']})"),
        ("format", f"{summary.get('format', 'alpaca')} records, {summary['style']} prompt, "
                   f"{summary['tokenizer']} tokenizer"),
        ("tokens/example", f"min {lengths['min']}  mean {lengths['mean']}  {percentiles}  "
                           f"max {lengths['max']}"),
        (f"over {summary['max_length']} tokens", f"{summary['over_max_length']} "
                                                 "(truncated in training)"),
        ("nothing learned", f"{summary['unlearnable']} (learned part cut by truncation or "
                            "empty; left out of training)"),
        (f"padding @ batch {summary['batch_size']}", _format_padding(summary)),
        ("empty instructions", str(summary["empty_instructions"])),
        ("empty outputs", str(summary["empty_outputs"])),
        ("duplicates", f"{summary['duplicates']} exact, {summary['conflicting_duplicates']} "
                       "with a different output"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines + [f"  note: {note}" for note in summary["notes"]])


def _format_padding(summary: dict[str, Any]) -> str:
    padding = summary["padding_fraction"]
    if padding is None:
        return (f"not measured: no full batch of {summary['batch_size']} in "
                f"{summary['splits']['train']} training records")
    return (f"{padding['random'] * 100:.1f}% random batches, "
            f"{padding['length_grouped'] * 100:.1f}% length-grouped")
