"""The one set-up every user of a loaded model needs: generation settings that stop at the
model's end-of-text token and at its prompt style's stop strings (`LoadedModel.style`: the
model's own chat template when it has one, whose stop strings are its end-of-turn text).

Chat, `generate`, the pipeline and the server all start here, so they stop alike.

Example:
    >>> from sftkit.checkpoints import LoadedModel
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
    >>> loaded = LoadedModel(model, model.config, gpt2_tokenizer(), "a tiny random GPT-2")
    >>> loaded.style.name
    'alpaca'
    >>> config = generation_settings(loaded, max_new_tokens=8)
    >>> config.max_new_tokens, config.stop_ids, config.stop_strings == loaded.style.stop_strings
    (8, (50256,), True)
    >>> generation_settings(loaded, raw=True, stop=("\\n\\n",)).stop_strings
    ('\\n\\n',)
    >>> for_decoding(loaded, "none") is loaded, type(for_decoding(loaded, "int8").model.lm_head)
    (True, <class 'sftkit.generation.quantize.Int8Linear'>)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from sftkit.checkpoints import LoadedModel
from sftkit.generation.config import GenerationConfig
from sftkit.generation.quantize import quantized_for_decoding


def generation_settings(loaded: LoadedModel, *, raw: bool = False, stop: Sequence[str] = (),
                        **options: Any) -> GenerationConfig:
    """A `GenerationConfig` with `options` (max_new_tokens, temperature, ...) that stops at the
    model's end-of-text token, at its prompt style's stop strings (not for a `raw` prompt, which
    is in no style) and at the extra `stop` strings."""
    style_stops = () if raw else loaded.style.stop_strings
    return GenerationConfig(stop_ids=(loaded.tokenizer.eos_id,),
                            stop_strings=tuple(dict.fromkeys((*style_stops, *stop))),
                            **options)


def for_decoding(loaded: LoadedModel, quantize: str) -> LoadedModel:
    """`loaded` itself for quantize "none"; for "int8", the same model with int8 linear layers
    (`sftkit.generation.quantize`) to generate with, tokenizer and style unchanged."""
    model = quantized_for_decoding(loaded.model, quantize)
    if model is loaded.model:
        return loaded
    quantized = copy.copy(loaded)  # not dataclasses.replace: it would reset a chosen style
    quantized.model = model
    return quantized
