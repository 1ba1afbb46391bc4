"""The book's `GPTModel` state dicts (`.pth`): import, and export back.

People who followed "Build a Large Language Model (From Scratch)" have `torch.save(
model.state_dict(), "model.pth")` files (or `{"model_state_dict": ..., ...}` checkpoints). They
are read with `torch.load(..., weights_only=True)`, so a file can hold tensors only, never code.

The file does not say how many heads the model has, so a preset gives the shape; three details
the book's own configurations vary are read from the tensors instead: the context length
(`pos_emb`), whether the query/key/value projections have biases, and whether the output head
is still the token embedding (fine-tuning in the book unties them).

Example:
    >>> model = load_book_checkpoint("gpt2-medium355M-sft.pth",
    ...                              ModelConfig.from_name("gpt2-medium"))  # doctest: +SKIP
    >>> save_book_checkpoint(model, "exported.pth")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from sftkit.checkpoints.keymaps import GPT2_BOOK, convert_from_ours
from sftkit.checkpoints.weights import model_from_state_dict, saved_state_dict
from sftkit.errors import SftkitError
from sftkit.io import atomic_path
from sftkit.models import Model, ModelConfig

_QUERY_BIAS = "trf_blocks.0.att.W_query.bias"


def read_book_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a book `.pth` file (a bare state dict or a training checkpoint)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SftkitError(f"{path}: no such file") from None
    except Exception as error:  # the weights-only unpickler refuses anything but tensors
        raise SftkitError(f"{path}: cannot be read as plain tensors ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("model_state_dict"), dict):
        data = data["model_state_dict"]  # the book's chapter-5 checkpoints add the optimizer
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise SftkitError(f"{path}: expected a state dict (names -> tensors)")
    return data


def load_book_checkpoint(path: str | Path, config: ModelConfig, *,
                         dtype: torch.dtype | str | None = None) -> Model:
    """Our `GPTModel` holding a book `.pth`, `config` giving its shape (e.g. `gpt2-medium`)."""
    if config.family != "gpt2":
        raise SftkitError(f"{path}: the book's .pth files hold GPT-2 models; --config "
                          f"{config.name or config.family} is a {config.family} model")
    state = read_book_state_dict(path)
    overrides: dict = {"qkv_bias": _QUERY_BIAS in state}
    if "pos_emb.weight" in state:
        overrides["context_length"] = state["pos_emb.weight"].shape[0]
    head, embedding = state.get("out_head.weight"), state.get("tok_emb.weight")
    tied = head is not None and embedding is not None and torch.equal(head, embedding)
    overrides["tie_embeddings"] = tied
    if tied:
        state = {key: t for key, t in state.items() if key != "out_head.weight"}
    config = config.replace(**overrides)
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
        book[f"trf_blocks.{layer}.att.mask"] = mask
    path = Path(path)
    with atomic_path(path) as temp:
        torch.save(book, temp)
    return path
