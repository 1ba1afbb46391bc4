"""What `sftkit prepare` reports about a dataset: split sizes, token lengths, truncation and
the padding a batch size costs, with and without length-grouped batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sftkit.data.dataset import EpochBatchSampler, InstructionDataset, padding_fraction
from sftkit.data.records import RecordReport, Splits

PERCENTILES = (50, 90, 95, 99)


def _percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    stats: dict[str, float] = {f"p{p}": _percentile(ordered, p) for p in PERCENTILES}
    stats["min"] = ordered[0]
    stats["max"] = ordered[-1]
    stats["mean"] = round(sum(ordered) / len(ordered), 1)
    return stats


def summarize(
    splits: Splits,
    datasets: dict[str, InstructionDataset],
    report: RecordReport,
    *,
    batch_size: int = 8,
    max_length: int | None = 1024,
    seed: int = 123,
) -> dict[str, Any]:
    """A JSON-ready summary; token lengths count the appended end-of-text token."""
    all_lengths = [n for dataset in datasets.values() for n in dataset.lengths]
    train_lengths = datasets["train"].lengths
    padding = {}
    for grouped in (False, True):
        sampler = EpochBatchSampler(train_lengths, batch_size, shuffle=True, drop_last=True,
                                    group_by_length=grouped, seed=seed)
        fraction = padding_fraction(train_lengths, sampler.batches(), max_length)
        padding["length_grouped" if grouped else "random"] = round(fraction, 4)
    return {
        "records": report.total,
        "splits": {name: len(records) for name, records in splits.items()},
        "tokenizer": datasets["train"].tokenizer.name,
        "style": datasets["train"].style.name,
        "token_lengths": length_stats(all_lengths),
        "max_length": max_length,
        "over_max_length": sum(1 for n in all_lengths if max_length and n - 1 > max_length),
        "batch_size": batch_size,
        "padding_fraction": padding,
        "empty_outputs": len(report.empty_outputs),
        "duplicates": len(report.duplicates),
        "conflicting_duplicates": len(report.conflicting),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few aligned lines for the terminal."""
    splits = summary["splits"]
    lengths = summary["token_lengths"]
    padding = summary["padding_fraction"]
    percentiles = "  ".join(f"p{p} {lengths[f'p{p}']}" for p in PERCENTILES)
    rows = [
        ("records", f"{summary['records']}  (train {splits['train']}, val {splits['val']}, "
                    f"test {splits['test']})"),
        ("format", f"{summary['style']} prompt, {summary['tokenizer']} tokenizer"),
        ("tokens/example", f"min {lengths['min']}  mean {lengths['mean']}  {percentiles}  "
                           f"max {lengths['max']}"),
        (f"over {summary['max_length']} tokens", f"{summary['over_max_length']} "
                                                 "(truncated in training)"),
        (f"padding @ batch {summary['batch_size']}",
         f"{padding['random'] * 100:.1f}% random batches, "
         f"{padding['length_grouped'] * 100:.1f}% length-grouped"),
        ("empty outputs", str(summary["empty_outputs"])),
        ("duplicates", f"{summary['duplicates']} exact, {summary['conflicting_duplicates']} "
                       "with a different output"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
