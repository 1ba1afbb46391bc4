"""Resumable training checkpoints: model weights, optimizer, progress and RNG state.

Each checkpoint is a directory `checkpoints/step-NNNNNN/` holding `model.safetensors` and
`trainer_state.pt` (read back with `torch.load(weights_only=True)`: tensors and plain values
only, no code). It is written under a temporary name and renamed into place, and
`checkpoints/latest` names the newest complete one, so a crash mid-save never leaves a
checkpoint that looks complete but is not. A checkpoint damaged later (disk, copy) is skipped on
resume in favour of the newest one that loads, and the staging directories a crash mid-save
leaves behind are removed at the next start.

A model that trains only in part (LoRA/DoRA adapters on a frozen base) is checkpointed by its
trainable parameters alone: the frozen base is the run's starting model, rebuilt before a
resume, so a checkpoint is megabytes, not the whole model. Resuming checks that the trainable
parameters' names and shapes match (another `lora.r` or `lora.targets` does not).

Example:
    >>> import tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.AdamW(model.parameters())
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     directory = Path(tmp)
    ...     first = save_checkpoint(directory, model, optimizer, TrainProgress(step=1))
    ...     newest = save_checkpoint(directory, model, optimizer, TrainProgress(step=2))
    ...     _ = (newest / "trainer_state.pt").write_bytes(b"damaged")
    ...     path, progress = load_newest_checkpoint(directory, model, optimizer,
    ...                                             log=lambda line: print(line[:31]))
    ...     path.name, progress.step
    skipping checkpoint step-000002
    ('step-000001', 1)
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from sftkit.errors import SftkitError
from sftkit.io import atomic_directory, write_text_atomic
from sftkit.training.optim import OptimizerLike

#: `step-NNNNNN`, and the staging (`.tmp`) and moved-aside (`.old`) directories that
#: `io.atomic_directory` makes beside it.
_CHECKPOINT = re.compile(r"step-(\d+)")
_STAGING = re.compile(r"\.(step-\d+)\..+\.(tmp|old)")
WEIGHTS = "model.safetensors"


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
                    optimizer: OptimizerLike, progress: TrainProgress,
                    keep: int = 2) -> Path:
    """Write a checkpoint for `progress.step`; keep the newest `keep` of them."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(checkpoints_dir, progress.step)
    name = final.name
    with atomic_directory(final) as staging:
        save_weights(model, staging / WEIGHTS)
        save_trainer_state(staging, progress, optimizer.state_dict())
    publish_checkpoint(checkpoints_dir, name, keep)
    return final


def save_trainer_state(directory: Path, progress: TrainProgress,
                       optimizer_state: dict[str, Any]) -> None:
    """`trainer_state.pt`: the optimizer state, progress and RNG states."""
    state = {
        "optimizer": optimizer_state,
        "progress": asdict(progress),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(state, directory / "trainer_state.pt")


def publish_checkpoint(checkpoints_dir: Path, name: str, keep: int) -> None:
    """Point `latest` at the complete checkpoint `name`; keep the newest `keep`."""
    write_text_atomic(checkpoints_dir / "latest", name + "\n")
    for old in checkpoints_newest_first(checkpoints_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_path(checkpoints_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` goes.

    >>> checkpoint_path(Path("checkpoints"), 12).as_posix()
    'checkpoints/step-000012'
    """
    return checkpoints_dir / f"step-{step:06d}"


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = checkpoints_dir / "latest"
    if not pointer.exists():
        return None
    path = checkpoints_dir / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def checkpoints_newest_first(checkpoints_dir: Path) -> list[Path]:
    """Every `step-NNNNNN` directory, the highest step first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in checkpoints_dir.iterdir()
             if (match := _CHECKPOINT.fullmatch(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def remove_stale_staging(checkpoints_dir: Path) -> list[Path]:
    """Remove what a crash in the middle of `save_checkpoint` left behind: staging
    directories, and copies moved aside whose replacement is in place; a moved-aside copy
    whose replacement never arrived is put back. Returns what was removed."""
    if not checkpoints_dir.is_dir():
        return []
    removed = []
    for path in checkpoints_dir.iterdir():
        match = _STAGING.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        # A moved-aside copy is the only one left if the crash came before its replacement.
        target = checkpoints_dir / match.group(1)
        if match.group(2) == "old" and not target.is_dir():
            if not (path / match.group(1)).is_dir():
                continue
            os.replace(path / match.group(1), target)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def load_newest_checkpoint(checkpoints_dir: Path, model: torch.nn.Module,
                           optimizer: OptimizerLike | None,
                           log: Callable[[str], None],
                           load: Callable[..., TrainProgress] | None = None,
                           ) -> tuple[Path, TrainProgress] | None:
    """Restore the newest checkpoint that loads (with `load(path, model, optimizer)`,
    `load_checkpoint` by default), logging each newer one skipped and why; None when there
    is none. Raises `SftkitError` when there are some but none loads."""
    failures = []
    for path in checkpoints_newest_first(checkpoints_dir):
        try:
            return path, (load or load_checkpoint)(path, model, optimizer)
        except SftkitError as error:
            log(f"skipping checkpoint {path.name}: {error}")
            failures.append(str(error))
    if failures:
        raise SftkitError(f"no checkpoint in {checkpoints_dir} can be loaded ("
                          + "; ".join(failures) + "); move the directory away to start over")
    return None


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: OptimizerLike | None = None) -> TrainProgress:
    """Restore model, optimizer and RNG state from `path`; return the progress it records.

    The trainer state is read and checked before anything is restored; a damaged or foreign
    file is a `SftkitError` naming it (the model may then hold part of it: load another).
    """
    state = read_trainer_state(path / "trainer_state.pt")
    load_weights(model, path / WEIGHTS)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise SftkitError(f"{path / 'trainer_state.pt'}: the optimizer state does not fit "
                              f"this model ({first_line(error)})") from None
    return restore_trainer_state(state)


def restore_trainer_state(state: dict[str, Any]) -> TrainProgress:
    """Restore the RNG states of a trainer state; return its progress."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return TrainProgress(**state["progress"])


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The trainable parameters by name when only part of `model` trains (adapters), else
    None (everything trains: the whole model is saved)."""
    parameters = dict(model.named_parameters())  # a shared (tied) tensor once
    trainable = {name: p.detach() for name, p in parameters.items() if p.requires_grad}
    return trainable if len(trainable) < len(parameters) else None


def save_weights(model: torch.nn.Module, file: Path) -> None:
    """The model's weights, or only its trainable ones when part of it is frozen."""
    trainable = trainable_tensors(model)
    if trainable is None:
        save_model(model, str(file))
    else:
        save_file({name: t.contiguous() for name, t in trainable.items()}, str(file))


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """Restore what `save_weights` wrote; a file made for another set-up is a `SftkitError`."""
    trainable = trainable_tensors(model)
    try:
        if trainable is None:
            load_model(model, str(file), strict=True)
            return
        tensors = load_file(str(file))
    except (OSError, RuntimeError, SafetensorError) as error:
        raise SftkitError(f"{file}: cannot be loaded ({first_line(error)})") from None
    mismatch = _shape_mismatch(tensors, trainable)
    if mismatch:
        raise SftkitError(f"{file}: its trainable parameters do not match the model's "
                          f"({mismatch}); was it written with another train.method, lora.r, "
                          "lora.targets or lora.train_modules? Resume with the same ones")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(tensors[name])


def _shape_mismatch(found: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> str:
    """What differs between the names and shapes of two sets of tensors ("" if nothing)."""
    missing = [name for name in wanted if name not in found]
    unexpected = [name for name in found if name not in wanted]
    reshaped = [f"{name} {tuple(found[name].shape)} != {tuple(tensor.shape)}"
                for name, tensor in wanted.items()
                if name in found and found[name].shape != tensor.shape]
    parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("missing", missing), ("unexpected", unexpected),
                                  ("shape", reshaped)) if names]
    return "; ".join(parts)


def read_trainer_state(file: Path) -> dict[str, Any]:
    """`trainer_state.pt` as tensors and plain values (no code is ever run), checked."""
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, which would run the file's code: never.
        raise SftkitError(f"{file}: not a trainer state written by sftkit (damaged, or it "
                          "holds objects other than tensors and plain values: refused, "
                          "nothing in it was run)") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise SftkitError(f"{file}: cannot be read ({first_line(error)})") from None
    expected = {"optimizer", "progress", "torch_rng", "cuda_rng"}
    if not isinstance(state, dict) or not expected <= state.keys():
        raise SftkitError(f"{file}: not a trainer state written by sftkit (expected a dict "
                          f"with {', '.join(sorted(expected))})")
    try:
        TrainProgress(**state["progress"])
    except TypeError as error:
        raise SftkitError(f"{file}: its progress record is not valid ({error})") from None
    return state


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
