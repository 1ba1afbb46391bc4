"""Put adapters into a model, say what trains, and merge them back.

Targets are the projections by our own module names (`sftkit.models`): attention `q_proj`,
`k_proj`, `v_proj`, `out_proj`; GPT-2's MLP `fc` and `proj`; Llama's `gate_proj`, `up_proj`,
`down_proj`; and `lm_head`. `all-linear` means every projection of the blocks (not the head).

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4,
    ...                                           vocab_size=64))
    >>> wrapped = apply_lora(model, LoraSpec(r=4), ["q_proj", "v_proj"])
    >>> len(wrapped), sorted(trainable_names(model))[:2]
    (4, ['blocks.0.attn.q_proj.lora_A', 'blocks.0.attn.q_proj.lora_B'])
    >>> merged = merge_adapters(model)
    >>> type(model.blocks[0].attn.q_proj).__name__, len(merged)
    ('Linear', 4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from sftkit.models.base import DecoderModel
from sftkit.models.matmul import Linear
from sftkit.peft.dora import DoRALinear
from sftkit.peft.lora import LoRALinear, LoraSpec
from sftkit.peft.shared_input import share_inputs

#: Every projection a family's blocks have, by our module names.
BLOCK_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "gpt2": ("q_proj", "k_proj", "v_proj", "out_proj", "fc", "proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj", "down_proj"),
}
HEAD = "lm_head"
ALL_LINEAR = "all-linear"

#: Small modules that can train fully beside the adapters (`train_modules`).
TRAINABLE_GROUPS = ("norms", "embeddings")


def target_names(family: str, targets: Iterable[str]) -> tuple[str, ...]:
    """The module names `targets` stands for, checked against the family's projections.

    >>> target_names("llama", ["all-linear", "lm_head"])[-2:]
    ('down_proj', 'lm_head')
    >>> target_names("gpt2", ["gate_proj"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: LoRA target 'gate_proj' is not a projection of a gpt2 model; choose from ...
    """
    known = BLOCK_PROJECTIONS[family]
    names: list[str] = []
    for target in targets:
        expanded = known if target == ALL_LINEAR else (target,)
        for name in expanded:
            if name not in (*known, HEAD):
                raise ValueError(f"LoRA target {name!r} is not a projection of a {family} "
                                 f"model; choose from {', '.join((ALL_LINEAR, *known, HEAD))}")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("LoRA needs at least one target")
    return tuple(names)


def layer_indices(text: str, n_layers: int) -> tuple[int, ...]:
    """The blocks `text` names: "" = all of them; `last:N` = the top N; else indices and
    ranges such as `0-3,8`. Adapting only the top blocks makes a step cheaper: backward stops
    at the lowest adapted block (nothing below it needs a gradient).

    >>> layer_indices("last:3", 30), layer_indices("0-2,7", 8), len(layer_indices("", 4))
    ((27, 28, 29), (0, 1, 2, 7), 4)
    >>> layer_indices("2-9", 8)
    Traceback (most recent call last):
    ...
    ValueError: layer 8 is out of range: the model has blocks 0-7
    """
    text = text.strip()
    if not text:
        return tuple(range(n_layers))
    if text.startswith("last:") and text.removeprefix("last:").isdigit():
        count = int(text.removeprefix("last:"))
        if not 1 <= count <= n_layers:
            raise ValueError(f"last:{count} needs 1 to {n_layers} blocks")
        return tuple(range(n_layers - count, n_layers))
    chosen: set[int] = set()
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        first, _, last = part.partition("-")
        if not (first.isdigit() and (last or first).isdigit()):
            raise ValueError(f"{text!r} is not `last:N` or indices and ranges like `0-3,8`")
        chosen.update(range(int(first), int(last or first) + 1))
    outside = sorted(index for index in chosen if index >= n_layers)
    if outside:
        raise ValueError(f"layer {outside[0]} is out of range: the model has blocks "
                         f"0-{n_layers - 1}")
    return tuple(sorted(chosen))


def apply_lora(model: DecoderModel, spec: LoraSpec, targets: Sequence[str],
               train_modules: Sequence[str] = (), layers: Sequence[int] | None = None
               ) -> list[str]:
    """Freeze `model` and wrap each targeted linear in a `LoRALinear` (a `DoRALinear` with
    `spec.dora`), in the blocks `layers` lists (default: all; the head is not in a block);
    `train_modules` ("norms", "embeddings") keep training fully. Returns the wrapped modules'
    names. A layer already wrapped, or quantized, is wrapped as it is."""
    names = target_names(model.config.family, targets)
    model.requires_grad_(False)
    layer_class = DoRALinear if spec.dora else LoRALinear
    skipped = () if layers is None else tuple(
        f"blocks.{index}." for index in range(model.config.n_layers) if index not in layers)
    wrapped = []
    for module_name, module in list(model.named_modules()):
        if f"{module_name}.".startswith(skipped):
            continue
        for child_name, child in list(module.named_children()):
            if child_name in names and not isinstance(child, LoRALinear):
                setattr(module, child_name, layer_class(child, spec))
                wrapped.append(f"{module_name}.{child_name}" if module_name else child_name)
    _train_groups(model, train_modules)
    share_inputs(model)  # q/k/v (gate/up) computed together: `sftkit.peft.shared_input`
    return wrapped


def _train_groups(model: DecoderModel, groups: Sequence[str]) -> None:
    for group in groups:
        if group not in TRAINABLE_GROUPS:
            raise ValueError(f"cannot train {group!r} beside the adapters; choose from "
                             f"{', '.join(TRAINABLE_GROUPS)}")
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm"
        if ("norms" in groups and is_norm) or ("embeddings" in groups
                                              and isinstance(module, nn.Embedding)):
            module.requires_grad_(True)


def adapter_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every adapted layer of `model`, by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, LoRALinear)}


def trainable_names(model: nn.Module) -> list[str]:
    """The parameters that train (adapters and chosen modules), by name."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run saves and resumes: the trainable parameters only, detached."""
    return {name: parameter.detach() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


@torch.no_grad()
def merge_adapters(model: DecoderModel) -> list[str]:
    """Replace every adapted layer by a plain `Linear` (`sftkit.models.matmul`) holding its
    effective weight (in the base's dtype; a quantized base is dequantized to fp32), and make
    the whole model trainable again. Returns the merged modules' names. A merged head adapter
    unties the head from the token embedding (the model's config then says so)."""
    merged = []
    for name, layer in adapter_layers(model).items():
        weight = layer.weight.detach()
        bias = layer.bias
        linear = Linear(layer.in_features, layer.out_features, bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, linear)
        merged.append(name)
    if HEAD in merged and model.config.tie_embeddings:
        model.config = dataclasses.replace(model.config, tie_embeddings=False)
        model.tok_emb.shared_with_head = False
    model.requires_grad_(True)
    return merged
