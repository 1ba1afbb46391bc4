"""Our own checkpoint: a directory with `model.safetensors`, `config.json` and the tokenizer.

`config.json` holds `{"format": "sftkit", "format_version": 1, "model": <ModelConfig fields>,
"tokenizer": {"kind": "gpt2"} | {"kind": "hf", "file": "tokenizer.json", ...}}`; a model with a chat
template keeps it beside the tokenizer in `chat_template.jinja`, and the tokenizer entry holds
`"chat_template": {"file", "sha256", "special_tokens"}`. Loading reads
JSON and safetensors only, so it never executes code. Saving builds the directory beside its
destination and renames it into place, so readers never see a half-written model.

Example:
    >>> import tempfile
    >>> from sftkit.models import ModelConfig, build_model
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
    >>> folder = save_native(build_model(config), gpt2_tokenizer(), tempfile.mkdtemp())
    >>> model, tokenizer = load_native(folder)
    >>> sorted(path.name for path in folder.iterdir()), model.config.n_layers
    (['config.json', 'model.safetensors'], 1)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sftkit.checkpoints.files import read_safetensors
from sftkit.checkpoints.weights import model_from_state_dict, saved_state_dict
from sftkit.data.prompts import PromptStyle
from sftkit.data.templates import TemplateStyle
from sftkit.errors import SftkitError
from sftkit.io import atomic_directory
from sftkit.models import Model, ModelConfig
from sftkit.tokenizers import HFTokenizer, TiktokenTokenizer, Tokenizer, gpt2_tokenizer
from sftkit.tokenizers.hf import ChatTemplate

FORMAT = "sftkit"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"
STYLE_FILE = "sftkit.json"
"""Beside an adapter (`sftkit.checkpoints.peft_files`): the prompt style it was trained with."""


def is_native_directory(path: str | Path) -> bool:
    """Whether `path` is a directory written by `save_native`."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_native(model: Model, tokenizer: Tokenizer, directory: str | Path, *,
                style: PromptStyle | None = None) -> Path:
    """Write `model` and `tokenizer` to `directory` (replaced atomically if it exists).

    `style` is the prompt style the model was trained with, so that loading the directory
    gives it back: a `TemplateStyle`'s template is saved beside the tokenizer; a built-in
    style becomes the config's `prompt_style` and no template is saved (the model no longer
    answers in it). Without `style`, the tokenizer's own chat template is saved, if any.

    Example:
        >>> import tempfile
        >>> from sftkit.data.prompts import get_style
        >>> from sftkit.models import ModelConfig, build_model
        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> config = ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=32, n_heads=4,
        ...                                n_kv_heads=2, hidden_dim=64)
        >>> folder = save_native(build_model(config), smollm2_tokenizer(), tempfile.mkdtemp())
        >>> sorted(path.name for path in folder.iterdir())
        ['chat_template.jinja', 'config.json', 'model.safetensors', 'tokenizer.json']
        >>> load_native(folder)[1].chat_template.special_tokens["eos_token"]
        '<|im_end|>'
        >>> folder = save_native(build_model(config), smollm2_tokenizer(), tempfile.mkdtemp(),
        ...                      style=get_style("chatml"))
        >>> model, tokenizer = load_native(folder)
        >>> model.config.prompt_style, tokenizer.chat_template is None
        ('chatml', True)
    """
    from safetensors.torch import save_file

    config = model.config
    template = _template_kept(tokenizer, style)
    if style is not None and not isinstance(style, TemplateStyle):
        config = config.replace(prompt_style=style.name)
    with atomic_directory(directory) as staging:
        tensors = {name: t.contiguous() for name, t in saved_state_dict(model).items()}
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        spec = _tokenizer_spec(tokenizer, staging)
        if template is not None:
            (staging / TEMPLATE_FILE).write_text(template.text, encoding="utf-8")
            spec["chat_template"] = {"file": TEMPLATE_FILE, "sha256": template.sha256,
                                     "special_tokens": template.special_tokens}
        document = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "model": config.to_dict(), "tokenizer": spec}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n",
                                           encoding="utf-8")
    return Path(directory)


def _template_kept(tokenizer: Tokenizer, style: PromptStyle | None) -> ChatTemplate | None:
    """The chat template a saved model answers in (see `save_native`)."""
    if isinstance(style, TemplateStyle):
        return ChatTemplate(style.template, dict(style.special_tokens), style.source)
    if style is None and isinstance(tokenizer, HFTokenizer):
        return tokenizer.chat_template
    return None


def style_files(tokenizer: Tokenizer, style: PromptStyle | None) -> dict[str, str]:
    """The files (name -> text) that keep the prompt style a model was trained with beside an
    adapter, as `save_native` keeps it beside a model: `sftkit.json`, and the template.

    Example:
        >>> from sftkit.data.prompts import get_style
        >>> sorted(style_files(gpt2_tokenizer(), get_style("chatml")))
        ['sftkit.json']
    """
    template = _template_kept(tokenizer, style)
    named = style.name if style is not None and not isinstance(style, TemplateStyle) else None
    document: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                "prompt_style": named}
    files = {}
    if template is not None:
        files[TEMPLATE_FILE] = template.text
        document["chat_template"] = {"file": TEMPLATE_FILE, "sha256": template.sha256,
                                     "special_tokens": template.special_tokens}
    files[STYLE_FILE] = json.dumps(document, indent=2) + "\n"
    return files


def use_saved_style(directory: str | Path, tokenizer: Tokenizer) -> str | None:
    """Give `tokenizer` the chat template `style_files` kept in `directory` (or none, when a
    built-in style was kept); returns that built-in style's name. No file: nothing changes.

    Example:
        >>> import tempfile
        >>> from sftkit.data.prompts import get_style
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name, text in style_files(gpt2_tokenizer(), get_style("phi3")).items():
        ...     _ = (folder / name).write_text(text)
        >>> use_saved_style(folder, gpt2_tokenizer())
        'phi3'
    """
    path = Path(directory) / STYLE_FILE
    if not path.is_file():
        return None
    document = _read_document(Path(directory), path.name)[0]
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.chat_template = _load_template(document.get("chat_template"),
                                                 Path(directory), path)
    return document.get("prompt_style")


def _tokenizer_spec(tokenizer: Tokenizer, directory: Path) -> dict[str, Any]:
    if isinstance(tokenizer, TiktokenTokenizer) and tokenizer.name == "gpt2":
        return {"kind": "gpt2"}
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.backend.save(str(directory / TOKENIZER_FILE))
        return {"kind": "hf", "file": TOKENIZER_FILE, "name": tokenizer.name,
                "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
                "vocab_size": tokenizer.vocab_size}
    raise SftkitError(f"cannot save tokenizer {tokenizer!r}: only GPT-2's BPE and Hugging Face "
                      "tokenizers can be stored with a model")


def load_native(directory: str | Path, *,
                dtype: torch.dtype | str | None = None) -> tuple[Model, Tokenizer]:
    """Model and tokenizer from a directory written by `save_native`."""
    directory = Path(directory)
    document, config_path = _read_document(directory)
    config = ModelConfig.from_dict(document.get("model") or {}, source=str(config_path))
    weights_path = directory / WEIGHTS_FILE
    model = model_from_state_dict(config, read_safetensors(weights_path),
                                  source=str(weights_path), dtype=dtype)
    return model, _load_tokenizer(document.get("tokenizer") or {}, directory, config_path)


def load_native_tokenizer(directory: str | Path) -> Tokenizer:
    """Only the tokenizer of a directory written by `save_native` (no weight is read).

    Example:
        >>> import tempfile
        >>> from sftkit.models import ModelConfig, build_model
        >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
        >>> folder = save_native(build_model(config), gpt2_tokenizer(), tempfile.mkdtemp())
        >>> load_native_tokenizer(folder).name
        'gpt2'
    """
    directory = Path(directory)
    document, config_path = _read_document(directory)
    return _load_tokenizer(document.get("tokenizer") or {}, directory, config_path)


def _read_document(directory: Path, name: str = CONFIG_FILE) -> tuple[dict[str, Any], Path]:
    """The checked `config.json` (or `name`) of a native directory, and its path."""
    config_path = directory / name
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SftkitError(f"{config_path}: cannot read ({error})") from None
    except ValueError as error:
        raise SftkitError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SftkitError(f"{config_path}: not an sftkit model (no \"format\": \"{FORMAT}\")")
    if document.get("format_version") != FORMAT_VERSION:
        raise SftkitError(f"{config_path}: format_version {document.get('format_version')!r} "
                          f"is not supported (this sftkit reads {FORMAT_VERSION})")
    return document, config_path


def _load_tokenizer(spec: dict[str, Any], directory: Path, config_path: Path) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "hf":
        tokenizer = HFTokenizer.from_file(directory / spec.get("file", TOKENIZER_FILE),
                                          name=spec.get("name", directory.name),
                                          eos_id=spec.get("eos_id"), pad_id=spec.get("pad_id"),
                                          vocab_size=spec.get("vocab_size"))
        tokenizer.chat_template = _load_template(spec.get("chat_template"), directory,
                                                 config_path)
        return tokenizer
    raise SftkitError(f"{config_path}: unknown tokenizer kind {kind!r} (expected gpt2 or hf)")


def _load_template(entry: Any, directory: Path, config_path: Path) -> ChatTemplate | None:
    """The saved chat template, checked against the hash `save_native` recorded."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise SftkitError(f"{config_path}: tokenizer.chat_template must name its file")
    path = directory / entry["file"]
    try:
        template = ChatTemplate(path.read_text(encoding="utf-8"),
                                dict(entry.get("special_tokens") or {}), str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise SftkitError(f"cannot read the chat template {path}: {error}") from None
    if entry.get("sha256") not in (None, template.sha256):
        raise SftkitError(f"{path}: the chat template changed since the model was saved "
                          f"(sha256 {template.sha256}, {config_path} records {entry['sha256']})")
    return template
