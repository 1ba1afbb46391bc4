"""PEFT's adapter format: `adapter_model.safetensors` + `adapter_config.json`, read and written.

An adapter directory written here loads with `peft.PeftModel.from_pretrained` onto the
`transformers` base model, and one trained with `peft` loads onto our models. Tensors carry
Hugging Face module names: `base_model.model.<hf module>.lora_A.weight` (r, in),
`.lora_B.weight` (out, r), DoRA's `.lora_magnitude_vector` (out,), and each fully trained
module's own weights (`modules_to_save`).

GPT-2's attention is one fused Conv1D, `c_attn`, whose output stacks query, key and value. Our
separate `q_proj`, `k_proj`, `v_proj` adapters are written as one exact `c_attn` adapter: the
ranks stacked, A = [A_q; A_k; A_v] (3r, in), and B block-diagonal (3 out, 3r), so B @ A stacks
B_q A_q, B_k A_k, B_v A_v exactly (the zero blocks add exact zeros). The rank is 3r, so
`rank_pattern` and `alpha_pattern` give `c_attn` its own rank and an alpha that keeps the scale
s = alpha / r (alpha / sqrt(r) with rsLoRA). A projection without an adapter gets zero rows of
B (and, with DoRA, the norms of its rows as magnitude: unchanged). Read back, a `c_attn` adapter
is split exactly: each projection gets its row block of B with the whole A (rank 3r for ours,
r for one trained with `peft`). Conv1D stores its weight transposed; `fan_in_fan_out` says so,
and does not change A's and B's layout.

Example:
    >>> import tempfile
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.peft import apply_lora
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4, vocab_size=64)
    >>> spec = LoraSpec(r=4, alpha=8)
    >>> model = build_model(config)
    >>> _ = apply_lora(model, spec, ["q_proj", "v_proj"])
    >>> folder = save_adapter(model, tempfile.mkdtemp(), base_model="gpt2", spec=spec,
    ...                       targets=["q_proj", "v_proj"])
    >>> {key: tuple(t.shape) for key, t in read_adapter_tensors(folder).items()}
    ... # doctest: +NORMALIZE_WHITESPACE
    {'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight': (8, 32),
     'base_model.model.transformer.h.0.attn.c_attn.lora_B.weight': (96, 8)}
    >>> read_adapter_config(folder)["rank_pattern"]
    {'attn.c_attn': 8}
    >>> fresh = build_model(config)
    >>> _ = fresh.load_state_dict(model.state_dict(), strict=False)  # the same base
    >>> load_adapter(fresh, folder)
    LoraSpec(r=4, alpha=8.0, dropout=0.0, rslora=False, dora=False)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sftkit.checkpoints.files import read_safetensors
from sftkit.checkpoints.keymaps import (
    HF_KEYMAPS,
    UnknownKeyError,
    convert_from_ours,
    convert_to_ours,
    get_mapped_key,
    layer_template,
)
from sftkit.errors import SftkitError
from sftkit.io import atomic_directory
from sftkit.models import Model
from sftkit.peft import (
    DoRALinear,
    LoRALinear,
    LoraSpec,
    adapter_layers,
    frozen_weight,
    target_names,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
MAGNITUDE_SUFFIXES = (".lora_magnitude_vector", ".lora_magnitude_vector.weight")
HEAD = "lm_head"
# GPT2LMHeadModel names its blocks under `transformer.`; our key map leaves that prefix out.
HF_PREFIX = {"gpt2": "transformer.", "llama": ""}


def hf_module(family: str, ours: str) -> str:
    """The Hugging Face module holding our module `ours` (a fused one for GPT-2's q/k/v).

    >>> hf_module("gpt2", "blocks.3.attn.k_proj"), hf_module("llama", "blocks.0.mlp.up_proj")
    ('transformer.h.3.attn.c_attn', 'model.layers.0.mlp.up_proj')
    """
    if ours == HEAD:
        return HEAD
    theirs = HF_KEYMAPS[family].their_name(f"{ours}.weight").removesuffix(".weight")
    return HF_PREFIX[family] + theirs


def our_modules(family: str, theirs: str) -> tuple[str, ...]:
    """Our modules inside the Hugging Face module `theirs` (raises `UnknownKeyError`).

    >>> our_modules("gpt2", "transformer.h.0.attn.c_attn")
    ('blocks.0.attn.q_proj', 'blocks.0.attn.k_proj', 'blocks.0.attn.v_proj')
    """
    if theirs == HEAD:
        return (HEAD,)
    target = get_mapped_key(f"{theirs.removeprefix(HF_PREFIX[family])}.weight",
                            HF_KEYMAPS[family].to_ours)
    if target is None:
        raise UnknownKeyError(theirs)
    names = target if isinstance(target, tuple) else (target,)
    return tuple(name.removesuffix(".weight") for name in names)


def short_name(module: str) -> str:
    """A module's name from its layer on (`transformer.h.0.attn.c_proj` -> `attn.c_proj`):
    unambiguous for PEFT's suffix matching, and the same in every layer."""
    template, _ = layer_template(module)
    return template.rpartition("{}.")[2]


# --- writing -----------------------------------------------------------------------------


def save_adapter(model: Model, directory: str | Path, *, base_model: str, spec: LoraSpec,
                 targets: Sequence[str], train_modules: Sequence[str] = (),
                 extra_files: dict[str, str] | None = None) -> Path:
    """Write `model`'s adapters in PEFT's format to `directory` (replaced atomically).

    `base_model` is the base's name or path (`base_model_name_or_path`); `spec` and
    `targets` are what `apply_lora` was given; with `train_modules`, the parameters that
    train beside the adapters are saved whole (`modules_to_save`). `extra_files` (name ->
    text) are written beside them. See the module doc for GPT-2's fused `c_attn`.
    """
    from safetensors.torch import save_file

    family = model.config.family
    groups = _hf_groups(model)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for theirs, members in groups.items():
        fused = _fuse(model, members, spec)
        for suffix, tensor in fused.items():
            tensors[PREFIX + theirs + suffix] = tensor.detach().float().contiguous()
        rank = fused[A_SUFFIX].shape[0]
        ranks[theirs], alphas[theirs] = rank, spec.scaling * _denominator(rank, spec.rslora)
    for name, tensor in _saved_modules(model, train_modules).items():
        tensors[PREFIX + name] = tensor.detach().contiguous()
    document = _config(spec, base_model, family, targets, ranks, alphas,
                       modules_to_save=_module_patterns(model, train_modules))
    document["layers_to_transform"] = _adapted_blocks(model)
    with atomic_directory(directory) as staging:
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(document, indent=2) + "\n",
                                              encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return Path(directory)


def _adapted_blocks(model: Model) -> list[int] | None:
    """PEFT's `layers_to_transform`: the adapted blocks when not all are (`lora.layers`)."""
    blocks = {int(name.split(".")[1]) for name in adapter_layers(model)
              if name.startswith("blocks.")}
    if len(blocks) == model.config.n_layers:
        return None
    if any(not name.startswith("blocks.") for name in adapter_layers(model)):
        raise SftkitError("an adapter on the head beside adapters on only some blocks cannot "
                          "be written in PEFT's format (layers_to_transform would skip the "
                          "head): adapt every block, or not the head")
    return sorted(blocks)


def _hf_groups(model: Model) -> dict[str, list[str]]:
    """Our adapted modules grouped by the Hugging Face module holding them."""
    groups: dict[str, list[str]] = {}
    for name in adapter_layers(model):
        groups.setdefault(hf_module(model.config.family, name), []).append(name)
    if not groups:
        raise SftkitError("the model has no LoRA adapters to save (apply_lora first)")
    return groups


def _fuse(model: Model, members: list[str], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """One PEFT adapter for the Hugging Face module holding `members` (our adapted modules):
    ranks stacked, B block-diagonal, each block's scale folded in relative to `spec`'s."""
    family = model.config.family
    parts = our_modules(family, hf_module(family, members[0]))
    layers = adapter_layers(model)
    a_blocks, magnitudes = [], []
    b_blocks: list[tuple[torch.Tensor | None, int]] = []
    for part in parts:
        layer = layers.get(part)
        if layer is None:  # a fused sibling without adapter: zero rows of B, its own norms
            base = model.get_submodule(part)
            b_blocks.append((None, _features(base)[0]))
            magnitudes.append(frozen_weight(base).detach().float().norm(dim=1))
            continue
        a_blocks.append(layer.lora_A.detach().float())
        ratio = layer.scaling / spec.scaling
        lora_b = layer.lora_B.detach().float()
        b_blocks.append((lora_b if ratio == 1.0 else lora_b * ratio, layer.out_features))
        if isinstance(layer, DoRALinear):
            magnitudes.append(layer.magnitude.detach().float())
    lora_a = torch.cat(a_blocks)
    lora_b = torch.zeros(sum(rows for _, rows in b_blocks), lora_a.shape[0])
    row = column = 0
    for block, rows in b_blocks:
        if block is not None:
            lora_b[row:row + rows, column:column + block.shape[1]] = block
            column += block.shape[1]
        row += rows
    fused = {A_SUFFIX: lora_a, B_SUFFIX: lora_b}
    if spec.dora:
        fused[MAGNITUDE_SUFFIXES[0]] = torch.cat(magnitudes)
    return fused


def _features(linear: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear layer, plain or quantized."""
    return int(cast(int, linear.out_features)), int(cast(int, linear.in_features))


def _denominator(rank: int, rslora: bool) -> float:
    return math.sqrt(rank) if rslora else float(rank)


def _saved_modules(model: Model, train_modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """The fully trained parameters (Hugging Face names), when `train_modules` asks for them."""
    if not train_modules:
        return {}
    layers = tuple(f"{name}." for name in adapter_layers(model))
    trained = {name: parameter.detach() for name, parameter in model.named_parameters()
               if parameter.requires_grad and not name.startswith(layers)}
    family = model.config.family
    return {HF_PREFIX[family] + name: tensor
            for name, tensor in convert_from_ours(trained, HF_KEYMAPS[family]).items()}


def _module_patterns(model: Model, train_modules: Sequence[str]) -> list[str] | None:
    names = {short_name(name.rpartition(".")[0])
             for name in _saved_modules(model, train_modules)}
    return sorted(names) or None


def _config(spec: LoraSpec, base_model: str, family: str, targets: Sequence[str],
            ranks: dict[str, int], alphas: dict[str, float],
            modules_to_save: list[str] | None) -> dict[str, Any]:
    """PEFT's `adapter_config.json` (a LoraConfig): per-module ranks and alphas only where
    they differ from `r` and `lora_alpha`, keyed by the modules' short names when every layer
    agrees."""
    target_modules = sorted({short_name(module) for module in ranks})
    allowed = target_names(family, targets)
    strays = [module for module in ranks if not any(
        name.rpartition(".")[2] in allowed for name in our_modules(family, module))]
    if strays:
        raise SftkitError(f"adapters on {', '.join(strays)} are not among the targets "
                          f"{', '.join(targets)}")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "use_rslora": spec.rslora, "use_dora": spec.dora, "target_modules": target_modules,
        "rank_pattern": _patterns(ranks, spec.r), "alpha_pattern": _patterns(alphas, spec.alpha),
        "fan_in_fan_out": family == "gpt2", "modules_to_save": modules_to_save,
        "bias": "none", "inference_mode": True, "init_lora_weights": True,
    }


def _patterns(values: dict[str, Any], default: Any) -> dict[str, Any]:
    """`values` that differ from `default`, by short name where all layers agree, else by
    the whole module name (escaped: PEFT matches these keys as regular expressions)."""
    by_short: dict[str, set[Any]] = {}
    for module, value in values.items():
        by_short.setdefault(short_name(module), set()).add(value)
    patterns: dict[str, Any] = {}
    for module, value in values.items():
        if math.isclose(value, default, rel_tol=1e-12):
            continue
        short = short_name(module)
        if len(by_short[short]) == 1:
            patterns[short] = value
        else:
            patterns[re.escape(module)] = value
    return patterns


# --- reading -----------------------------------------------------------------------------


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The checked `adapter_config.json` of a PEFT LoRA adapter directory."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SftkitError(f"{path}: cannot read ({error})") from None
    except ValueError as error:
        raise SftkitError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise SftkitError(f"{path}: expected a JSON object")
    if document.get("peft_type") != "LORA":
        raise SftkitError(f"{path}: peft_type {document.get('peft_type')!r} is not supported "
                          "(sftkit reads LORA adapters, with or without DoRA)")
    if document.get("bias", "none") != "none":
        raise SftkitError(f"{path}: bias {document['bias']!r} is not supported (only 'none')")
    return document


def read_adapter_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of `adapter_model.safetensors`, by PEFT's names."""
    return read_safetensors(Path(directory) / ADAPTER_WEIGHTS)


def is_adapter_directory(path: str | Path) -> bool:
    """Whether `path` is a PEFT adapter directory."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_adapter(model: Model, directory: str | Path) -> LoraSpec:
    """Apply the PEFT LoRA (or DoRA) adapter in `directory` to `model`: every adapted module
    becomes a `LoRALinear`/`DoRALinear` holding its weights; fully trained modules get
    theirs. Returns the adapter's spec (its `r` and `lora_alpha`; a module with its own rank
    or alpha has its own spec). An unknown module or a mis-shaped tensor is an `SftkitError`
    naming the file and the key."""
    document = read_adapter_config(directory)
    weights_path = Path(directory) / ADAPTER_WEIGHTS
    spec = LoraSpec(r=int(document["r"]), alpha=float(document["lora_alpha"]),
                    dropout=float(document.get("lora_dropout") or 0.0),
                    rslora=bool(document.get("use_rslora")), dora=bool(document.get("use_dora")))
    adapters, whole = _split_keys(read_adapter_tensors(directory), weights_path)
    model.requires_grad_(False)
    if whole:  # first: wrapping a module renames its weight
        _load_whole(model, whole, weights_path)
    for theirs, tensors in adapters.items():
        _apply_one(model, theirs, tensors, spec, document, weights_path)
    return spec


def _split_keys(tensors: dict[str, torch.Tensor], path: Path
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Adapter tensors grouped by Hugging Face module, and whole module weights."""
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise SftkitError(f"{path}: key {key!r} does not start with {PREFIX!r}")
        name = key.removeprefix(PREFIX)
        for suffix in (A_SUFFIX, B_SUFFIX, *MAGNITUDE_SUFFIXES):
            if name.endswith(suffix):
                kind = MAGNITUDE_SUFFIXES[0] if suffix in MAGNITUDE_SUFFIXES else suffix
                adapters.setdefault(name.removesuffix(suffix), {})[kind] = tensor
                break
        else:
            if ".lora_" in name:
                raise SftkitError(f"{path}: key {key!r}: this kind of LoRA tensor is not "
                                  "supported (only lora_A, lora_B and DoRA's magnitude)")
            # peft saves a targeted embedding's or head's own weight too, as `base_layer`
            whole[name.replace(".base_layer.", ".")] = tensor
    return adapters, whole


def _apply_one(model: Model, theirs: str, tensors: dict[str, torch.Tensor], spec: LoraSpec,
               document: dict[str, Any], path: Path) -> None:
    """Wrap our modules inside `theirs` and load the adapter, split by rows if fused."""
    where = f"{path}: {PREFIX}{theirs}"
    if A_SUFFIX not in tensors or B_SUFFIX not in tensors:
        raise SftkitError(f"{where}: needs both lora_A.weight and lora_B.weight")
    try:
        parts = our_modules(model.config.family, theirs)
        bases = [model.get_submodule(part) for part in parts]
    except (UnknownKeyError, AttributeError):
        raise SftkitError(f"{where}: no such module in a {model.config.family} model "
                          f"{model.config.name or ''}".rstrip()) from None
    lora_a, lora_b = tensors[A_SUFFIX], tensors[B_SUFFIX]
    rank = lora_a.shape[0]
    out_sizes = [_features(base)[0] for base in bases]
    expected: dict[str, tuple[int, ...]] = {A_SUFFIX: (rank, _features(bases[0])[1]),
                                            B_SUFFIX: (sum(out_sizes), rank)}
    if spec.dora:
        expected[MAGNITUDE_SUFFIXES[0]] = (sum(out_sizes),)
    for suffix, shape in expected.items():
        found = tuple(tensors[suffix].shape) if suffix in tensors else None
        if found != shape:
            raise SftkitError(f"{where}{suffix}: shape {found}, the model needs {shape}")
    alpha = _pattern_value(document.get("alpha_pattern") or {}, theirs, spec.alpha)
    layer_spec = LoraSpec(r=rank, alpha=float(alpha), dropout=spec.dropout,
                          rslora=spec.rslora, dora=spec.dora)
    rows = 0
    for part, base, size in zip(parts, bases, out_sizes, strict=True):
        layer = (DoRALinear if spec.dora else LoRALinear)(base, layer_spec)
        with torch.no_grad():
            layer.lora_A.copy_(lora_a)
            layer.lora_B.copy_(lora_b[rows:rows + size])
            if isinstance(layer, DoRALinear):
                layer.magnitude.copy_(tensors[MAGNITUDE_SUFFIXES[0]][rows:rows + size])
        parent, _, child = part.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        rows += size


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _load_whole(model: Model, whole: dict[str, torch.Tensor], path: Path) -> None:
    """Copy fully trained modules' weights (Hugging Face names) into `model`, shape-checked."""
    family = model.config.family
    named = {key.removeprefix(HF_PREFIX[family]): tensor for key, tensor in whole.items()}
    ours, origin, unknown = convert_to_ours(named, HF_KEYMAPS[family])
    if unknown:
        raise SftkitError(f"{path}: unknown keys for a {family} model: {', '.join(unknown)}")
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in ours.items():
            if name not in state or state[name].shape != tensor.shape:
                found = tuple(state[name].shape) if name in state else None
                raise SftkitError(f"{path}: {PREFIX}{origin[name]}: shape "
                                  f"{tuple(tensor.shape)}, the model needs {found}")
            state[name].copy_(tensor)
