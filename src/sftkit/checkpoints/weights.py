"""Put a state dict into a model, checking every tensor; and the state dict we save.

The model is built on the meta device (no random initialisation, no memory) and the checked
tensors are assigned in place, so loading costs one pass over the weights.

Example:
    >>> from sftkit.models import ModelConfig, build_model
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
    >>> weights = saved_state_dict(build_model(config))
    >>> model = model_from_state_dict(config, weights, source="example")
    >>> model.num_parameters() == config.num_parameters()
    True
"""

from __future__ import annotations

import torch

from sftkit.checkpoints.keymaps import KeyMap, convert_to_ours
from sftkit.errors import SftkitError
from sftkit.models import Model, ModelConfig, build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """None means float32: exact, and what every CPU trains in safely."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise SftkitError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}") from None


def saved_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """Our tensors, one per name: a tied head is left out (it is the token embedding)."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in saved_state_dict(build_model(config)).items()}


def model_from_state_dict(config: ModelConfig, state_dict: dict[str, torch.Tensor], *,
                          source: str, keymap: KeyMap | None = None,
                          dtype: torch.dtype | str | None = None) -> Model:
    """A model of `config` holding `state_dict` (their names when `keymap` is given, else ours).

    A missing, unexpected or mis-shaped tensor is an `SftkitError` naming `source` and listing
    every offending key with both shapes.
    """
    if keymap is not None and keymap.family != config.family:
        raise SftkitError(f"{source}: a {keymap.family} key map cannot load a "
                          f"{config.family} model")
    if keymap is None:
        ours, origin, unknown = dict(state_dict), {name: name for name in state_dict}, []
    else:
        ours, origin, unknown = convert_to_ours(state_dict, keymap)
    expected = expected_shapes(config)
    _check(config, ours, origin, unknown, expected, source, keymap)
    target_dtype = resolve_dtype(dtype)
    tensors = {name: tensor.to(target_dtype) if tensor.is_floating_point() else tensor
               for name, tensor in ours.items()}
    with torch.device("meta"):
        model = build_model(config)
    model.load_state_dict(tensors, strict=False, assign=True)
    # assign=True gives the head its own Parameter; share the embedding's again.
    model.tie_weights()
    return model


def _check(config: ModelConfig, ours: dict[str, torch.Tensor], origin: dict[str, str],
           unknown: list[str], expected: dict[str, tuple[int, ...]], source: str,
           keymap: KeyMap | None) -> None:
    inverse = keymap.from_ours() if keymap else {}
    missing = [f"{_their_name(name, inverse)} (model expects {list(shape)})"
               for name, shape in expected.items() if name not in ours]
    unexpected = [f"{key}" for key in unknown]
    unexpected += [f"{origin[name]} {list(tensor.shape)}" for name, tensor in ours.items()
                   if name not in expected]
    wrong = [f"{_describe(origin[name], name)}: file has {list(tensor.shape)}, model expects "
             f"{list(expected[name])}"
             for name, tensor in ours.items()
             if name in expected and tuple(tensor.shape) != expected[name]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source}: the tensors do not fit a {config.family} model "
             f"({config.name or 'custom'}: {config.n_layers} layers, emb_dim {config.emb_dim}, "
             f"vocab {config.vocab_size})"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items)
    raise SftkitError("\n".join(lines))


def _their_name(ours: str, inverse: dict) -> str:
    """The name a missing tensor has in the file's own layout, for the error message."""
    parts = ours.split(".")
    layer = next((part for part in parts if part.isdigit()), None)
    template = ".".join("{}" if part == layer else part for part in parts) if layer else ours
    for target, theirs in inverse.items():
        members = target if isinstance(target, tuple) else (target,)
        if template in members:
            name = theirs.format(layer) if layer else theirs
            return ours if name == ours else f"{name} (ours: {ours})"
    return ours


def _describe(theirs: str, ours: str) -> str:
    return ours if theirs == ours else f"{theirs} (ours: {ours})"
