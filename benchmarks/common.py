"""Data, tokenizers and small measurements shared by the benchmark sections."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftkit.data.prompts import PromptStyle, get_style
from sftkit.data.records import Splits, load_records, split_records
from sftkit.models import PRESETS
from sftkit.tokenizers import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class DataSpec:
    """Where the records come from: `None` = sftkit's embedded dataset, else a JSON(L) path."""

    path: str | None = None

    @property
    def label(self) -> str:
        return "embedded" if self.path is None else self.path.rsplit("/", 1)[-1]

    def splits(self) -> Splits:
        if self.path is None:
            from sftkit.data.embedded import load_embedded_records

            records = load_embedded_records()
        else:
            records = load_records(self.path)
        return split_records(records)


def tokenizer_and_style(model_name: str) -> tuple[Tokenizer, PromptStyle]:
    """The tokenizer and prompt style a model preset brings."""
    preset = PRESETS[model_name]
    tokenizer = load_tokenizer("gpt2" if preset.tokenizer == "gpt2" else "smollm2")
    return tokenizer, get_style(preset.prompt_style)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's `VmHWM` first: `getrusage`'s `ru_maxrss` survives `execve`, so a spawned worker
    would report at least what its parent held when it forked.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch_stats(inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Supervised tokens, examples, input positions and the sum of squared example lengths
    (for attention FLOPs) of one batch."""
    per_row = (targets != -100).sum(dim=1)
    return {
        "supervised": int(per_row.sum()),
        "examples": int(inputs.shape[0]),
        "positions": int(inputs.numel()),
        "sum_sq": int((per_row.double() ** 2).sum()),
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
