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

from sftkit.checkpoints.keymaps import KeyMap, UnknownKeyError, convert_from_ours, convert_to_ours
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


def expected_shapes(config: ModelConfig,
                    keymap: KeyMap | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a model of `config` stores: the one shape table for every
    weight format. Our names, or, given a `keymap`, that layout's (fused and transposed as it
    stores them). Read off a model built on the meta device, so it can never disagree with it.

    Example:
        >>> from sftkit.checkpoints.keymaps import GPT2_HF
        >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
        >>> expected_shapes(config)["blocks.0.attn.q_proj.weight"]
        (32, 32)
        >>> expected_shapes(config, GPT2_HF)["h.0.attn.c_attn.weight"]
        (32, 96)
    """
    with torch.device("meta"):
        state = saved_state_dict(build_model(config))
        if keymap is not None:
            state = convert_from_ours(state, keymap)
    return {name: tuple(t.shape) for name, t in state.items()}


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
        ours, origin = dict(state_dict), {name: name for name in state_dict}
        unknown: list[str] = []
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
    missing = [f"{_their_name(name, keymap)} (model expects {list(shape)})"
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


def _their_name(ours: str, keymap: KeyMap | None) -> str:
    """The name a missing tensor has in the file's own layout, for the error message."""
    try:
        theirs = ours if keymap is None else keymap.their_name(ours)
    except UnknownKeyError:
        return ours
    return _describe(theirs, ours)


def _describe(theirs: str, ours: str) -> str:
    return ours if theirs == ours else f"{theirs} (ours: {ours})"
