"""The prepare stage: records → validated splits on disk + a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.data.dataset import InstructionDataset
from sftkit.data.prompts import get_style
from sftkit.data.records import inspect_records, parse_field_mapping, split_records
from sftkit.data.sources import load_source
from sftkit.data.summary import format_summary, summarize
from sftkit.io import write_json_atomic
from sftkit.tokenizers import Tokenizer, load_tokenizer


def prepare_dataset(
    data: str,
    out: str | Path,
    *,
    style: str = "alpaca",
    tokenizer: str | Tokenizer = "gpt2",
    fields: str | None = None,
    sha256: str | None = None,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    seed: int | None = None,
    max_length: int | None = 1024,
    batch_size: int = 8,
    verbose: bool = True,
) -> dict[str, Any]:
    """Load `data`, split it, write `train.json`, `val.json`, `test.json` and `summary.json`
    into `out`, and return (and print) the summary.

    Example:
        >>> summary = prepare_dataset("embedded", "runs/demo/data")  # doctest: +SKIP
        >>> summary["splits"]  # doctest: +SKIP
        {'train': 1020, 'val': 60, 'test': 120}
    """
    prompt_style = get_style(style)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    records = load_source(data, parse_field_mapping(fields), sha256)
    report = inspect_records(records)
    splits = split_records(records, train_fraction, test_fraction, seed)
    datasets = {name: InstructionDataset(part, tok, prompt_style)
                for name, part in splits.items()}
    summary = summarize(splits, datasets, report, batch_size=batch_size, max_length=max_length)
    summary["source"] = data
    out = Path(out)
    for name, part in splits.items():
        write_json_atomic(out / f"{name}.json", part)
    write_json_atomic(out / "summary.json", summary)
    if verbose:
        print(f"prepared {data} → {out}/{{train,val,test}}.json")
        print(format_summary(summary))
        for warning in report.warnings():
            print(f"  note: {warning}")
    return summary
