"""`sftkit models`: the model presets, their size, and whether their weights are here already.

Example:
    $ sftkit models
    preset                 family  params  context  weights                     offline
    gpt2                   gpt2    124M    1024     openai-community/gpt2       no
    ...
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Presets load by name, e.g. `sftkit generate --model gpt2-medium`; "
                     "'offline' says whether that works without a network right now.")


def run(args: argparse.Namespace) -> int:
    from sftkit.models import PRESETS

    header = ("preset", "family", "params", "context", "weights", "offline")
    rows = [header]
    for name, config in PRESETS.items():
        rows.append((name, config.family, format_count(config.num_parameters()),
                     str(config.context_length), _weights(config), _offline(config)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def format_count(count: int) -> str:
    """124439808 -> '124M', 1557611200 -> '1.6B'."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    return f"{round(count / 1e6)}M"


def _weights(config) -> str:
    if config.embedded_gguf:
        return f"embedded GGUF + {config.hf_repo_id}"
    return config.hf_repo_id or "-"


def _offline(config) -> str:
    from sftkit.checkpoints import hub
    from sftkit.errors import SftkitError

    if config.embedded_gguf:
        from sftkit.tokenizers.embedded import embedded_gguf_path

        try:
            embedded_gguf_path()
            return "yes (embedded)"
        except SftkitError:
            pass
    if config.hf_repo_id and hub.is_cached(config.hf_repo_id):
        return "yes (Hub cache)"
    return "no"
