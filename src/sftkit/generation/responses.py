"""Answers for a list of entries, in the book's responses format: each entry in its own shape
plus a `model_response`. An Alpaca entry is asked with the style's `format_prompt` (the book's
text); a conversation (messages, ShareGPT, prompt/completion) is asked to continue from its last
assistant message, `style.render(conversation_so_far, add_generation_prompt=True)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sftkit.data.formats import is_conversation, split_last_answer
from sftkit.data.prompts import PromptStyle
from sftkit.generation.config import GenerationConfig
from sftkit.generation.engine import generate
from sftkit.models import Model
from sftkit.tokenizers import Tokenizer


def generate_responses(model: Model, tokenizer: Tokenizer, style: PromptStyle,
                       entries: Sequence[Mapping[str, Any]], config: GenerationConfig,
                       progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Each entry with a `model_response`: the answer cut out of the generated text by the
    prompt style (no prompt echo, no response marker) — the book's responses file format.

    The tokenizer's end-of-text id and the style's stop strings are added to `config`'s.

    Example:
        >>> import torch
        >>> from sftkit.data.prompts import get_style
        >>> from sftkit.models import ModelConfig, build_model
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32,
        ...                                           n_heads=2, context_length=128))
        >>> entries = [{"instruction": "Name a color.", "input": "", "output": "Red."}]
        >>> answered = generate_responses(model, gpt2_tokenizer(), get_style("alpaca"),
        ...                               entries, GenerationConfig(max_new_tokens=3))
        >>> sorted(answered[0]), isinstance(answered[0]["model_response"], str)
        (['input', 'instruction', 'model_response', 'output'], True)
    """
    prompts = [generation_prompt(style, entry) for entry in entries]
    config = dataclasses.replace(
        config,
        stop_ids=tuple(dict.fromkeys((*config.stop_ids, tokenizer.eos_id))),
        stop_strings=tuple(dict.fromkeys((*config.stop_strings, *style.stop_strings))))
    outputs = generate(model, [tokenizer.encode(prompt) for prompt in prompts], config,
                       decode=tokenizer.decode, progress=progress)
    return [
        {**entry, "model_response": style.extract_response(prompt + tokenizer.decode(ids),
                                                           prompt)}
        for entry, prompt, ids in zip(entries, prompts, outputs)
    ]


def generation_prompt(style: PromptStyle, entry: Mapping[str, Any]) -> str:
    """What the model is asked: an Alpaca entry's prompt, or a conversation up to its last
    assistant message, ending where that answer starts.

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> generation_prompt(get_style("chatml"), {"prompt": "Hi", "completion": "Hello."})
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if not is_conversation(entry):
        return style.format_prompt(entry)
    conversation, _ = split_last_answer(entry, style.input_separator)
    return style.render(conversation, add_generation_prompt=True)
