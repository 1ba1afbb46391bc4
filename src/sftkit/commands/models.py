"""`sftkit models`: the model presets, their size, and whether their weights are here already.

Example:
    $ sftkit models
    preset                 family  params  context  weights                     offline
    gpt2                   gpt2    124M    1024     openai-community/gpt2       no
    ...
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.models import ModelConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Presets load by name, e.g. `sftkit generate --model gpt2-medium`; "
                     "'offline' says whether that works without a network right now ('no': "
                     "the weights download from the Hugging Face Hub on first use).")


def run(args: argparse.Namespace) -> int:
    from sftkit.models import PRESETS

    header = ("preset", "family", "params", "context", "weights", "offline")
    rows = [header]
    reasons = []
    for name, config in PRESETS.items():
        offline, reason = _offline(config)
        rows.append((name, config.family, format_count(config.num_parameters()),
                     str(config.context_length), _weights(config), offline))
        if reason:
            reasons.append(f"{name} is not available offline: {reason}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    for reason in reasons:
        print(f"  note: {reason}")
    return 0


def format_count(count: int) -> str:
    """124439808 -> '124M', 1557611200 -> '1.6B'.

    >>> format_count(124439808), format_count(1557611200)
    ('124M', '1.6B')
    """
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    return f"{round(count / 1e6)}M"


def _weights(config: ModelConfig) -> str:
    if config.embedded_gguf:
        return f"embedded GGUF + {config.hf_repo_id}"
    return config.hf_repo_id or "-"


def _offline(config: ModelConfig) -> tuple[str, str]:
    """The `offline` cell, and for a model meant to be here (the embedded one) why it is not.

    A Hub preset that is not cached is simply downloaded on first use: no reason needed.
    """
    from sftkit.checkpoints import hub
    from sftkit.errors import SftkitError

    missing = ""
    if config.embedded_gguf:
        from sftkit.tokenizers.embedded import embedded_gguf_path

        try:
            embedded_gguf_path()
            return "yes (embedded)", ""
        except SftkitError as error:
            missing = f"{error}; or let it download {config.hf_repo_id} from the Hub once"
    if config.hf_repo_id and hub.is_cached(config.hf_repo_id):
        return "yes (Hub cache)", ""
    return "no", missing
