"""The prepare stage: records → validated splits on disk + a summary.

The output directory is written as a set: staged beside `out`, then swapped in whole, so an
interrupted prepare leaves the previous set (or nothing), never a mix of old and new files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.data.dataset import InstructionDataset
from sftkit.data.formats import detect_format
from sftkit.data.prompts import PromptStyle, get_style
from sftkit.data.records import (
    Splits,
    capped_list,
    inspect_records,
    parse_field_mapping,
    split_indices,
)
from sftkit.data.show import marked_example
from sftkit.data.sources import load_source
from sftkit.data.summary import (
    format_summary,
    over_length_indices,
    summarize,
    unlearnable_indices,
)
from sftkit.errors import SftkitError
from sftkit.io import atomic_directory, write_json_atomic
from sftkit.tokenizers import Tokenizer, load_tokenizer

SPLIT_NAMES = ("train", "val", "test")
PREPARED_FILES = tuple(f"{name}.json" for name in (*SPLIT_NAMES, "summary"))


def prepare_dataset(
    data: str,
    out: str | Path,
    *,
    style: str | PromptStyle = "alpaca",
    tokenizer: str | Tokenizer = "gpt2",
    fields: str | None = None,
    sha256: str | None = None,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    seed: int | None = None,
    max_length: int | None = 1024,
    batch_size: int = 8,
    loss_on: str = "assistant",
    mask_prompt: bool = False,
    show: int = 0,
    color: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Load `data`, split it, write `train.json`, `val.json`, `test.json` and `summary.json`
    into `out`, and return (and print) the summary. `show` prints that many training examples
    with their learned tokens marked (`loss_on` for conversations, `mask_prompt` for Alpaca
    records, as in training).

    Example:
        >>> import tempfile
        >>> out = f"{tempfile.mkdtemp()}/data"
        >>> summary = prepare_dataset("embedded", out, verbose=False)
        >>> summary["splits"], summary["over_max_length"]
        ({'train': 1589, 'val': 94, 'test': 187}, 0)
        >>> sorted(path.name for path in Path(out).iterdir())
        ['summary.json', 'test.json', 'train.json', 'val.json']
    """
    out = Path(out)
    _check_replaceable(out)
    prompt_style = style if isinstance(style, PromptStyle) else get_style(style)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    records = load_source(data, parse_field_mapping(fields), sha256)
    report = inspect_records(records)
    indices = split_indices(len(records), train_fraction, test_fraction, seed)
    splits = Splits.select(records, indices)
    datasets = {name: InstructionDataset(part, tok, prompt_style, loss_on=loss_on)
                for name, part in splits.items()}
    report.over_max_length = over_length_indices(datasets, indices, max_length)
    report.unlearnable = unlearnable_indices(datasets, indices, mask_prompt, max_length)
    summary = summarize(splits, datasets, report, batch_size=batch_size, max_length=max_length)
    summary.update(source=data, format=detect_format(records, data), loss_on=loss_on,
                   mask_prompt=mask_prompt)
    write_prepared(out, splits, summary)
    if verbose:
        for index in range(min(show, len(datasets["train"]))):
            print(f"--- train example {index} ---")
            print(marked_example(datasets["train"], index, mask_prompt=mask_prompt,
                                 max_length=max_length, color=color))
        print(f"prepared {data} → {out}/{{train,val,test}}.json")
        print(format_summary(summary))
    return summary


def write_prepared(out: Path, splits: Splits, summary: dict[str, Any]) -> None:
    """Write the three splits and the summary into `out` as one set (see the module doc)."""
    with atomic_directory(out) as staging:
        for name, part in splits.items():
            write_json_atomic(staging / f"{name}.json", part)
        write_json_atomic(staging / "summary.json", summary)


def _check_replaceable(out: Path) -> None:
    """`out` is replaced whole: refuse a directory holding anything but a prepared set."""
    if out.exists() and not out.is_dir():
        raise SftkitError(f"--out {out} is a file; prepare writes a directory")
    others = sorted(path.name for path in out.iterdir()
                    if path.name not in PREPARED_FILES) if out.is_dir() else []
    if others:
        raise SftkitError(f"--out {out} holds other files ({capped_list(others, 5)}); "
                          "prepare replaces the whole directory, so give it an empty or new one")
