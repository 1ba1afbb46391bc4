"""The one set-up every user of a loaded model needs: its prompt style, and generation settings
that stop at its end-of-text token and at the style's stop strings.

Chat, `generate`, the pipeline and the server all start here, so they stop alike.

Example:
    >>> import torch
    >>> from sftkit.checkpoints import LoadedModel
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizer import gpt2_tokenizer
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
    >>> loaded = LoadedModel(model, model.config, gpt2_tokenizer(), "a tiny random GPT-2")
    >>> style = resolve_style(loaded)
    >>> style.name
    'alpaca'
    >>> config = generation_settings(loaded, style, max_new_tokens=8)
    >>> config.max_new_tokens, config.stop_ids, config.stop_strings == style.stop_strings
    (8, (50256,), True)
"""

from __future__ import annotations

from typing import Any

from sftkit.checkpoints import LoadedModel
from sftkit.data.prompts import PromptStyle, get_style
from sftkit.generation.engine import GenerationConfig


def resolve_style(loaded: LoadedModel, override: str | None = None) -> PromptStyle:
    """The prompt style named by `override`, else the model's own (its config's)."""
    return get_style(override or loaded.config.prompt_style)


def generation_settings(loaded: LoadedModel, style: PromptStyle | None,
                        **options: Any) -> GenerationConfig:
    """A `GenerationConfig` with `options` (max_new_tokens, temperature, ...) that stops at the
    model's end-of-text token and, given a style, at its stop strings (`style=None`: a raw
    prompt, no stop strings)."""
    return GenerationConfig(stop_ids=(loaded.tokenizer.eos_id,),
                            stop_strings=style.stop_strings if style is not None else (),
                            **options)
