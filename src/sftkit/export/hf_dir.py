"""A complete Hugging Face directory: the weights and `config.json`
(`sftkit.checkpoints.hf.save_hf_directory`), the tokenizer files, `tokenizer_config.json` with
the chat template the model was trained in and its special tokens, `special_tokens_map.json`,
`generation_config.json` with every id that ends an answer, and a model card (`README.md`).

`transformers` then loads it ready to chat: `AutoTokenizer` knows the eos token, and
`apply_chat_template` writes the text sftkit trained on (a built-in prompt style becomes a
Jinja template, `sftkit.export.turns.jinja_template`).

Example:
    >>> import json, tempfile
    >>> from sftkit.data.prompts import get_style
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4))
    >>> folder = save_hf_export(model, gpt2_tokenizer(), get_style("alpaca"),
    ...                         Path(tempfile.mkdtemp()) / "hf")
    >>> sorted(path.name for path in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['README.md', 'config.json', 'generation_config.json', 'merges.txt', 'model.safetensors',
     'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.json']
    >>> json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    [50256]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftkit.checkpoints.hf import save_hf_directory
from sftkit.data.prompts import PromptStyle
from sftkit.data.templates import TemplateStyle
from sftkit.export.model_card import ModelCard
from sftkit.export.turns import jinja_template
from sftkit.models import Model, ModelConfig
from sftkit.tokenizers import HFTokenizer, TiktokenTokenizer, Tokenizer

TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def save_hf_export(model: Model, tokenizer: Tokenizer, style: PromptStyle,
                   directory: str | Path, *, card: ModelCard | None = None) -> Path:
    """Write the complete directory (replaced atomically if it exists); `card` defaults to
    one naming the model and where its base came from."""
    card = card or ModelCard(model.config.name or Path(directory).name,
                             base_model=model.config.hf_repo_id or "")
    files = {**hf_side_files(model.config, tokenizer, style), "README.md": card.render()}
    return save_hf_directory(model, directory, tokenizer, extra_files=files)


def hf_side_files(config: ModelConfig, tokenizer: Tokenizer,
                  style: PromptStyle) -> dict[str, str]:
    """`tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json`."""
    special = special_tokens(tokenizer, style)
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer" if isinstance(tokenizer, TiktokenTokenizer)
        else "PreTrainedTokenizerFast",
        **special, "chat_template": jinja_template(style),
        "model_max_length": config.context_length, "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False,
    }
    generation = {"eos_token_id": stop_ids(tokenizer, style), "pad_token_id": tokenizer.pad_id,
                  "bos_token_id": _id_of(tokenizer, special.get("bos_token"))}
    return {"tokenizer_config.json": _json(tokenizer_config),
            "special_tokens_map.json": _json(special),
            "generation_config.json": _json({k: v for k, v in generation.items()
                                             if v is not None})}


def special_tokens(tokenizer: Tokenizer, style: PromptStyle) -> dict[str, Any]:
    """bos/eos/unk/pad as text: those the chat template is rendered with, eos and pad from
    the tokenizer's ids (what generation stops on and pads with).

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> special_tokens(gpt2_tokenizer(), get_style("alpaca"))["eos_token"]
        '<|endoftext|>'
    """
    tokens: dict[str, Any] = {}
    if isinstance(style, TemplateStyle):
        tokens.update({name: value for name, value in style.special_tokens.items()
                       if name in TOKEN_NAMES and isinstance(value, str)})
    eos = tokenizer.decode([tokenizer.eos_id])
    if isinstance(tokenizer, TiktokenTokenizer):
        tokens.update(bos_token=eos, unk_token=eos)  # GPT-2 uses <|endoftext|> for all
    tokens.update(eos_token=eos, pad_token=tokenizer.decode([tokenizer.pad_id]))
    return tokens


def stop_ids(tokenizer: Tokenizer, style: PromptStyle) -> list[int]:
    """The eos id, then each stop string of the style that is one token (ChatML's
    `<|im_end|>`...): the ids `generate` stops at.

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> stop_ids(smollm2_tokenizer(), get_style("chatml"))
        [2, 1]
    """
    ids = [tokenizer.eos_id]
    for stop in style.stop_strings:
        encoded = tokenizer.encode(stop)
        if len(encoded) == 1:
            ids.append(encoded[0])
    return list(dict.fromkeys(ids))


def _id_of(tokenizer: Tokenizer, token: str | None) -> int | None:
    if token is None:
        return None
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.token_to_id(token)
    encoded = tokenizer.encode(token)
    return encoded[0] if len(encoded) == 1 else None


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
