"""Sharded checkpoints for FSDP2 (`train.strategy = "fsdp"`), with `torch.distributed.
checkpoint`: every rank writes its own shards of the weights and of the optimizer state.

A sharded checkpoint is the usual `checkpoints/step-NNNNNN/` directory, atomic the usual way
(written under a staging name that rank 0 renames once every rank's part is in, then
`latest` points at it), holding `sharded/` (DCP's files) and `trainer_state.pt` (progress
and RNG states; the optimizer state is in the shards). DCP reshards on load, so a run resumes
on another number of processes, or in one (`load_sharded_checkpoint` needs no process
group): the state is keyed by the parameters' names in a `LossModel`. A checkpoint of one
process (or DDP) resumes on FSDP2 too (`load_whole_checkpoint`): each rank reads the whole
file and keeps its shards.

Example (one process, a plain model):
    >>> import tempfile
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.training.checkpointing import TrainProgress
    >>> from sftkit.training.replicas import LossModel
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=16, n_heads=2,
    ...                                vocab_size=50)
    >>> model, copy = build_model(config), build_model(config)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_sharded_checkpoint(Path(tmp), LossModel(model), None,
    ...                                    TrainProgress(step=3))
    ...     progress = load_sharded_checkpoint(path, LossModel(copy))
    ...     sharded = is_sharded(path)
    >>> progress.step, sharded, bool(torch.equal(copy.lm_head.weight, model.lm_head.weight))
    (3, True, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from sftkit.errors import SftkitError
from sftkit.io import atomic_directory
from sftkit.training import distributed
from sftkit.training.checkpointing import (
    WEIGHTS,
    TrainProgress,
    checkpoint_path,
    first_line,
    publish_checkpoint,
    read_trainer_state,
    restore_trainer_state,
    save_trainer_state,
)

SHARDS = "sharded"


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint at `path` is a sharded one."""
    return (path / SHARDS).is_dir()


def _state(module: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    state: dict[str, Any] = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(module, optimizer)
    return state


def save_sharded_checkpoint(checkpoints_dir: Path, module: nn.Module,
                            optimizer: torch.optim.Optimizer | None, progress: TrainProgress,
                            keep: int = 2) -> Path:
    """Every rank writes its shards of `module` (a `LossModel`, sharded or not) and of the
    optimizer state into the checkpoint of `progress.step`; rank 0 puts it in place. All
    ranks call it; all return once it is complete."""
    final = checkpoint_path(checkpoints_dir, progress.step)
    state = _state(module, optimizer)
    if distributed.is_main():
        with atomic_directory(final) as staging:
            _share(staging)
            # Returns when every rank has written (its metadata is written last).
            dcp.save(state, checkpoint_id=staging / SHARDS, no_dist=_alone())
            save_trainer_state(staging, progress, {})
        publish_checkpoint(checkpoints_dir, final.name, keep)
    else:
        dcp.save(state, checkpoint_id=_share(None) / SHARDS)
    distributed.barrier()  # no rank reads or writes on before the checkpoint is in place
    return final


def _alone() -> bool:
    """Whether this process has no process group (DCP then reads and writes alone)."""
    return not (dist.is_available() and dist.is_initialized())


def _share(staging: Path | None) -> Path:
    """Rank 0's staging directory, on every rank."""
    shared: list[Any] = [staging]
    if not _alone():
        dist.broadcast_object_list(shared, src=0)
    return Path(shared[0])


def load_sharded_checkpoint(path: Path, module: nn.Module,
                            optimizer: torch.optim.Optimizer | None = None) -> TrainProgress:
    """Restore `module` (a `LossModel`) and the optimizer from the sharded checkpoint at
    `path`, on any number of processes; return its progress. A checkpoint that does not fit
    is a `SftkitError` naming it."""
    trainer_state = read_trainer_state(path / "trainer_state.pt")
    state = _state(module, optimizer)
    try:
        dcp.load(state, checkpoint_id=path / SHARDS, no_dist=_alone())
    except (RuntimeError, ValueError, KeyError) as error:
        raise SftkitError(f"{path / SHARDS}: cannot be loaded into this model "
                          f"({first_line(error)})") from None
    set_model_state_dict(module, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(module, optimizer, state["optimizer"])
    return restore_trainer_state(trainer_state)


def load_whole_checkpoint(path: Path, module: nn.Module,
                          optimizer: torch.optim.Optimizer | None = None) -> TrainProgress:
    """Restore a sharded `module` (a `LossModel`) and its optimizer from the checkpoint of one
    process or of DDP at `path` (whole weights and a whole optimizer state): every rank reads
    it and keeps its own shards. Returns its progress."""
    trainer_state = read_trainer_state(path / "trainer_state.pt")
    try:
        weights = _by_every_name(module, {f"model.{name}": tensor for name, tensor
                                          in load_file(str(path / WEIGHTS)).items()})
    except (OSError, SafetensorError) as error:
        raise SftkitError(f"{path / WEIGHTS}: cannot be loaded ({first_line(error)})") from None
    # A LoRA run's file holds its trainable parameters alone.
    trainable = [name for name, parameter in module.named_parameters()
                 if parameter.requires_grad]
    missing = [name for name in trainable if name not in weights]
    if missing:
        raise SftkitError(f"{path / WEIGHTS}: has no {', '.join(missing[:3])}; was it written "
                          "with another train.method or lora settings? Resume with the same ones")
    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(module, dict[str, Any](weights), options=whole)
    if optimizer is not None:
        by_name = _keyed_by_name(trainer_state["optimizer"], trainable)
        try:
            set_optimizer_state_dict(module, optimizer, by_name, options=whole)
        except (KeyError, IndexError, ValueError, RuntimeError) as error:
            raise SftkitError(f"{path / 'trainer_state.pt'}: the optimizer state does not "
                              f"fit this model ({first_line(error)})") from None
    return restore_trainer_state(trainer_state)


def _keyed_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state keyed by the positions of its parameters (`Optimizer.state_dict`)
    keyed by their `names` instead (DCP's format).

    >>> _keyed_by_name({"state": {1: {"step": 2}}, "param_groups": [{"lr": 1, "params": [0, 1]}]},
    ...                ["a", "b"])
    {'state': {'b': {'step': 2}}, 'param_groups': [{'lr': 1, 'params': ['a', 'b']}]}
    """
    return {"state": {names[index]: value for index, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[index] for index in group["params"]]}
                             for group in state["param_groups"]]}


def _by_every_name(module: nn.Module, tensors: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """`tensors` under every name of their parameter in `module`: a file holds a tied weight
    under one of its names (safetensors keeps one)."""
    names: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    found = dict(tensors)
    for aliases in names.values():
        present = [name for name in aliases if name in tensors]
        if present:
            found.update(dict.fromkeys(aliases, tensors[present[0]]))
    return found


def gather_full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of `module` (a sharded `LossModel`), by the model's own parameter
    names, in CPU memory, on every rank (each rank answers its share of the test split with
    them). Every rank calls it; one whole tensor at a time is on the device."""
    from torch.distributed.tensor import DTensor

    return {name.removeprefix("model."): (tensor.full_tensor() if isinstance(tensor, DTensor)
                                          else tensor).detach().cpu()
            for name, tensor in module.state_dict().items()}
