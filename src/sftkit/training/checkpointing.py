"""Resumable training checkpoints: model weights, optimizer, progress and RNG state.

Each checkpoint is a directory `checkpoints/step-NNNNNN/` holding `model.safetensors` and
`trainer_state.pt` (read back with `torch.load(weights_only=True)`: tensors and plain values
only, no code). It is written under a temporary name and renamed into place, and
`checkpoints/latest` names the newest complete one, so a crash mid-save never leaves a
checkpoint that looks complete but is not.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from sftkit.errors import SftkitError
from sftkit.io import atomic_directory, write_text_atomic


@dataclass
class TrainProgress:
    """Where training stands after a completed optimizer step."""

    step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens_seen: int = 0  # input positions, padding included (the reference's count)
    supervised_tokens: int = 0
    examples_seen: int = 0
    train_seconds: float = 0.0


def save_checkpoint(checkpoints_dir: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, progress: TrainProgress,
                    keep: int = 2) -> Path:
    """Write a checkpoint for `progress.step`; keep the newest `keep` of them."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{progress.step:06d}"
    final = checkpoints_dir / name
    with atomic_directory(final) as staging:
        save_model(model, str(staging / "model.safetensors"))
        state = {
            "optimizer": optimizer.state_dict(),
            "progress": asdict(progress),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, staging / "trainer_state.pt")
    write_text_atomic(checkpoints_dir / "latest", name + "\n")
    for old in sorted(checkpoints_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = checkpoints_dir / "latest"
    if not pointer.exists():
        return None
    path = checkpoints_dir / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> TrainProgress:
    """Restore model, optimizer and RNG state from `path`; return the progress it records."""
    try:
        state: dict[str, Any] = torch.load(path / "trainer_state.pt", weights_only=True,
                                           map_location="cpu")
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    except (OSError, RuntimeError) as error:
        raise SftkitError(f"{path}: cannot load the checkpoint: {error}") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return TrainProgress(**state["progress"])
