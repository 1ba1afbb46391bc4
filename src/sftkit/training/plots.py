"""`loss.png`: training and validation loss against epochs, tokens seen on a second axis
(the reference's plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftkit.io import atomic_path


def plot_losses(metrics: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Plot the evaluation points of `metrics.jsonl` rows; None when there are none."""
    points = [row for row in metrics if row.get("val_loss") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in points]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(epochs, [row["train_loss"] for row in points], label="Training loss")
    axis.plot(epochs, [row["val_loss"] for row in points], linestyle="-.",
              label="Validation loss")
    axis.set_xlabel("Epochs")
    axis.set_ylabel("Loss")
    axis.legend(loc="upper right")
    if title:
        axis.set_title(title)
    tokens_axis = axis.twiny()
    tokens_axis.plot([row["tokens_seen"] for row in points],
                     [row["train_loss"] for row in points], alpha=0)
    tokens_axis.set_xlabel("Tokens seen")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
    return path
