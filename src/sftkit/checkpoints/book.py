"""The book's `GPTModel` state dicts (`.pth`): import, and export back.

People who followed "Build a Large Language Model (From Scratch)" have `torch.save(
model.state_dict(), "model.pth")` files (or `{"model_state_dict": ..., ...}` checkpoints). They
are read with `torch.load(..., weights_only=True)`, so a file can hold tensors only, never code.

The shape is read from the tensors (`book_config`): the number of blocks, the embedding width,
the vocabulary, the context length (`pos_emb`), the feed-forward width, whether the query/key/
value projections have biases and whether the output head is still the token embedding
(fine-tuning in the book unties them). Only the number of attention heads is not in the
shapes: it is the GPT-2 preset's of the same width (768 -> 12, 1024 -> 16, 1280 -> 20,
1600 -> 25). `config=` overrides the preset for anything else.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sftkit.models import build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, context_length=64))
    >>> path = save_book_checkpoint(model, Path(tempfile.mkdtemp()) / "model.pth")
    >>> loaded = load_book_checkpoint(path)
    >>> loaded.config.name, loaded.config.n_layers, loaded.config.context_length
    ('gpt2', 2, 64)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sftkit.checkpoints.files import read_tensor_pickle
from sftkit.checkpoints.keymaps import GPT2_BOOK, convert_from_ours, layer_template, with_layer
from sftkit.checkpoints.weights import model_from_state_dict, saved_state_dict
from sftkit.errors import SftkitError
from sftkit.io import atomic_path
from sftkit.models import PRESETS, Model, ModelConfig

_QUERY_BIAS = "trf_blocks.0.att.W_query.bias"
_EMBEDDING = "tok_emb.weight"
_FIRST_FC = "trf_blocks.0.ff.layers.0.weight"
_MASK = "trf_blocks.{}.att.mask"
# The number of heads is the one thing a GPT-2's tensors do not tell: the preset's of that width.
_GPT2_BY_WIDTH = {preset.emb_dim: preset for preset in PRESETS.values()
                  if preset.family == "gpt2"}


def read_book_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a book `.pth` file (a bare state dict or a training checkpoint)."""
    path = Path(path)
    data = read_tensor_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("model_state_dict"), dict):
        data = data["model_state_dict"]  # the book's chapter-5 checkpoints add the optimizer
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise SftkitError(f"{path}: expected a state dict (names -> tensors)")
    return data


def book_config(state: dict[str, torch.Tensor], path: str | Path,
                config: str | ModelConfig | None = None) -> ModelConfig:
    """The GPT-2 shape a book state dict holds (see the module doc); `config` (a preset name
    or a `ModelConfig`) gives the shape instead, its context length, biases and tying still
    read from the tensors."""
    if config is not None:
        return book_preset(config, path).replace(**_read_from_tensors(state))
    for name in (_EMBEDDING, _FIRST_FC):
        if name not in state:
            raise SftkitError(f"{path}: no {name!r}: not a state dict of the book's GPTModel")
    vocab_size, emb_dim = state[_EMBEDDING].shape
    preset = _GPT2_BY_WIDTH.get(emb_dim)
    if preset is None:
        widths = ", ".join(f"{width} ({p.name})" for width, p in _GPT2_BY_WIDTH.items())
        raise SftkitError(f"{path}: a GPT-2 {emb_dim} wide matches no GPT-2 preset ({widths}), "
                          "so its number of attention heads is unknown; give its shape with "
                          "config= (a preset name or a ModelConfig)")
    blocks = {layer_template(key)[1] for key in state if key.startswith("trf_blocks.")}
    return preset.replace(vocab_size=vocab_size, n_layers=len(blocks),
                          hidden_dim=state[_FIRST_FC].shape[0], **_read_from_tensors(state))


def book_preset(config: str | ModelConfig, path: str | Path) -> ModelConfig:
    """`config` (a preset name or a `ModelConfig`) once it is known to be a GPT-2.

    Example:
        >>> book_preset("gpt2-medium", "model.pth").n_heads
        16
    """
    preset = ModelConfig.from_name(config) if isinstance(config, str) else config
    if preset.family != "gpt2":
        raise SftkitError(f"{path}: the book's .pth files hold GPT-2 models; config "
                          f"{preset.name or preset.family} is a {preset.family} model")
    return preset


def _read_from_tensors(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the book's own configurations vary, read from the tensors."""
    found: dict[str, Any] = {"qkv_bias": _QUERY_BIAS in state}
    if "pos_emb.weight" in state:
        found["context_length"] = state["pos_emb.weight"].shape[0]
    head, embedding = state.get("out_head.weight"), state.get(_EMBEDDING)
    found["tie_embeddings"] = (head is not None and embedding is not None
                               and torch.equal(head, embedding))
    return found


def load_book_checkpoint(path: str | Path, config: str | ModelConfig | None = None, *,
                         dtype: torch.dtype | str | None = None) -> Model:
    """Our `GPTModel` holding a book `.pth`; its shape is read from the tensors, or given by
    `config` (e.g. `"gpt2-medium"`)."""
    state = read_book_state_dict(path)
    config = book_config(state, path, config)
    if config.tie_embeddings:
        state = {key: t for key, t in state.items() if key != "out_head.weight"}
    return model_from_state_dict(config, state, source=str(path), keymap=GPT2_BOOK, dtype=dtype)


def save_book_checkpoint(model: Model, path: str | Path) -> Path:
    """Write `model` as the book's `GPTModel.state_dict()` (loadable there with strict=True)."""
    config = model.config
    if config.family != "gpt2":
        raise SftkitError(f"{path}: the book's format holds GPT-2 models only, "
                          f"not {config.family}")
    state = saved_state_dict(model)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]  # the book has a separate out_head
    book = convert_from_ours(state, GPT2_BOOK)
    # The book's attention keeps its causal mask as a persistent buffer, so its strict
    # load_state_dict expects one per layer; one shared tensor is stored only once.
    mask = torch.triu(torch.ones(config.context_length, config.context_length), diagonal=1)
    for layer in range(config.n_layers):
        book[with_layer(_MASK, layer)] = mask
    path = Path(path)
    with atomic_path(path) as temp:
        torch.save(book, temp)
    return path
