"""Hugging Face `tokenizers` objects behind the `Tokenizer` protocol (the Llama family).

`HFTokenizer.from_file` is the one way a `tokenizer.json` becomes a tokenizer: a Hugging Face
directory, sftkit's own model directory and a user's file all go through it.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sftkit.tokenizers import smollm2_tokenizer
    >>> folder = Path(tempfile.mkdtemp())
    >>> smollm2_tokenizer().backend.save(str(folder / "tokenizer.json"))
    >>> tok = HFTokenizer.from_file(folder / "tokenizer.json", eos_token="<|im_end|>")
    >>> tok.encode("<|im_start|>user\\nHi<|im_end|>"), tok.eos_id
    ([1, 4093, 198, 26843, 2], 2)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.tokenizers.base import tiling_offsets
from sftkit.tokenizers.gpt2 import gpt2_byte_alphabet

# A SentencePiece-style vocabulary writes a space as this, and a byte it has no token for as
# <0xAB> (byte fallback).
METASPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Where Hugging Face writes the special tokens beside a tokenizer.json (the later one wins).
TOKEN_SIDE_FILES = ("special_tokens_map.json", "tokenizer_config.json")
# Where the model's own files state the special ids (the first one found wins).
ID_SIDE_FILES = ("generation_config.json", "config.json")
# Where a Hugging Face directory keeps its chat template (the file wins over the config's entry).
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The special tokens `transformers` hands a chat template (its `special_tokens_map`).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token", "additional_special_tokens")


@dataclass(frozen=True)
class ChatTemplate:
    """A model's own Jinja chat template, the special tokens it is rendered with and where it
    came from (`sftkit.data.templates` renders it).

    Example:
        >>> ChatTemplate("{{ bos_token }}", {"bos_token": "<s>"}, "a file").sha256[:12]
        '38924663eb3d'
    """

    text: str
    special_tokens: dict[str, Any] = field(default_factory=dict)
    """`bos_token`, `eos_token`, ... (a list for `additional_special_tokens`)."""
    source: str = "chat template"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` behind the `Tokenizer` protocol (Llama family).

    `encode` adds no BOS/EOS of its own (the prompt styles write every special token they
    want), and special tokens written in the text, such as `<|im_start|>`, map to their single
    ids. `decode` skips nothing, so `decode(encode(text)) == text`.

    Example:
        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> tok = smollm2_tokenizer()
        >>> tok.encode("<|im_start|>user\\nHi<|im_end|>")
        [1, 4093, 198, 26843, 2]
        >>> tok.decode([26843]), tok.token_to_id("<|im_end|>")
        ('Hi', 2)
    """

    def __init__(self, tokenizer: Any, name: str, eos_id: int, pad_id: int | None = None,
                 vocab_size: int | None = None, chat_template: ChatTemplate | None = None):
        self._tokenizer = tokenizer
        #: The model's own chat template, when its files have one.
        self.chat_template = chat_template
        self.name = name
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        # The model's embedding rows; a GGUF says it, a tokenizer.json only implies it.
        self.vocab_size: int = (tokenizer.get_vocab_size(with_added_tokens=True)
                                if vocab_size is None else vocab_size)

    @property
    def backend(self) -> Any:
        """The wrapped `tokenizers.Tokenizer` (for offsets, batch encoding, saving)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and tiling character offsets (see `Tokenizer.encode_with_offsets`).

        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> smollm2_tokenizer().encode_with_offsets("Hi<|im_end|>\\n")
        ([26843, 2, 198], [(0, 2), (2, 12), (12, 13)])
        """
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, tiling_offsets(encoding.offsets, len(text))

    def decode(self, ids: Sequence[int]) -> str:
        # tokenizers skips special tokens by default; the protocol keeps every id visible.
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> list[bytes | None]:
        """Each id's bytes; None for the special tokens (see `Tokenizer.token_bytes`).

        A byte-level vocabulary (GPT-2's alphabet) and a SentencePiece-style one (`▁` for a
        space, `<0x0A>` byte tokens) are read; added tokens that are not special are their text.

        >>> from sftkit.tokenizers import smollm2_tokenizer
        >>> tokens = smollm2_tokenizer().token_bytes()
        >>> tokens[26843], tokens[2], len(tokens)
        (b'Hi', None, 49152)
        """
        added = self._tokenizer.get_added_tokens_decoder()
        byte_level = type(self._tokenizer.decoder).__name__ == "ByteLevel"
        tokens: list[bytes | None] = [None] * self.vocab_size
        for text, index in self._tokenizer.get_vocab(with_added_tokens=True).items():
            if index >= self.vocab_size or (index in added and added[index].special):
                continue
            if index in added:
                tokens[index] = text.encode("utf-8")
            elif byte_level:
                alphabet = gpt2_byte_alphabet()
                tokens[index] = bytes(alphabet[char] for char in text)
            else:
                byte = _BYTE_TOKEN.fullmatch(text)
                tokens[index] = bytes([int(byte.group(1), 16)]) if byte else \
                    text.replace(METASPACE, " ").encode("utf-8")
        return tokens

    def token_to_id(self, token: str) -> int | None:
        """The id of one whole token (e.g. `"<|im_end|>"`); None if not in the vocabulary."""
        return self._tokenizer.token_to_id(token)

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = None,
                  pad_token: str | None = None, name: str | None = None, *,
                  eos_id: int | None = None, pad_id: int | None = None,
                  vocab_size: int | None = None) -> HFTokenizer:
        """Load a `tokenizer.json`, finding its end-of-sequence and padding ids.

        eos and pad are, first found: the ids or tokens given; the tokens in
        `tokenizer_config.json` / `special_tokens_map.json` beside the file; the ids in
        `generation_config.json` / `config.json` beside it. pad falls back to eos.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from sftkit.tokenizers import smollm2_tokenizer
            >>> folder = Path(tempfile.mkdtemp())
            >>> smollm2_tokenizer().backend.save(str(folder / "tokenizer.json"))
            >>> _ = (folder / "config.json").write_text('{"eos_token_id": 2}')
            >>> tok = HFTokenizer.from_file(folder / "tokenizer.json", name="smollm2")
            >>> tok.eos_id, tok.pad_id, tok.vocab_size
            (2, 2, 49152)
        """
        path = Path(path)
        backend = _read_backend(path)
        beside = _special_tokens_beside(path)
        eos_token = eos_token or beside.get("eos_token")
        pad_token = pad_token or beside.get("pad_token")
        if eos_id is None and eos_token is not None:
            eos_id = _required_id(backend, eos_token, path, "eos_token")
        if pad_id is None and pad_token is not None:
            pad_id = _required_id(backend, pad_token, path, "pad_token")
        if eos_id is None:
            # No special tokens named anywhere (e.g. a bare save_pretrained): the model's own
            # config files state the ids.
            eos_id, config_pad_id = _special_ids_beside(path)
            pad_id = config_pad_id if pad_id is None else pad_id
        if eos_id is None:
            raise SftkitError(f"{path}: no end-of-sequence token given and none found in "
                              f"{', '.join(TOKEN_SIDE_FILES + ID_SIDE_FILES)} beside it; "
                              "pass eos_token=...")
        return cls(backend, name=name or path.parent.name or path.stem, eos_id=eos_id,
                   pad_id=pad_id, vocab_size=vocab_size,
                   chat_template=read_chat_template(path.parent))

    def __repr__(self) -> str:
        return (f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def read_chat_template(directory: Path) -> ChatTemplate | None:
    """The chat template of a Hugging Face directory: `chat_template.jinja`, else the
    `chat_template` of `tokenizer_config.json` (a string, or a list of named templates, of which
    "default" is used); None when it has neither.

    Example:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / TOKENIZER_CONFIG).write_text(json.dumps({"eos_token": "</s>",
        ...     "chat_template": [{"name": "default", "template": "{{ eos_token }}"}]}))
        >>> template = read_chat_template(folder)
        >>> template.text, template.special_tokens
        ('{{ eos_token }}', {'eos_token': '</s>'})
    """
    config_path = directory / TOKENIZER_CONFIG
    config = _read_side_file(config_path) if config_path.is_file() else {}
    special_tokens = _special_tokens_beside(directory / "tokenizer.json", SPECIAL_TOKEN_NAMES)
    template_path = directory / TEMPLATE_FILE
    if template_path.is_file():
        try:
            text = template_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SftkitError(f"cannot read {template_path}: {error}") from None
        return ChatTemplate(text, special_tokens, str(template_path))
    entry = config.get("chat_template")
    if entry is None:
        return None
    return ChatTemplate(_default_template(entry, config_path), special_tokens, str(config_path))


def _default_template(entry: Any, config_path: Path) -> str:
    """The template text of a `chat_template` entry: the text itself, or the "default" one of
    a list of `{"name": ..., "template": ...}`."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, list):
        named = {item.get("name"): item.get("template") for item in entry
                 if isinstance(item, dict)}
        if isinstance(named.get("default"), str):
            return str(named["default"])
        raise SftkitError(f"{config_path}: chat_template lists templates "
                          f"{sorted(map(str, named))} but none named 'default'")
    raise SftkitError(f"{config_path}: chat_template must be a string or a list of named "
                      f"templates, got {type(entry).__name__}")


def _read_backend(path: Path) -> Any:
    from tokenizers import Tokenizer as BackendTokenizer

    if not path.is_file():
        raise SftkitError(f"cannot load the tokenizer file {path}: no such file")
    try:
        return BackendTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for bad JSON
        raise SftkitError(f"cannot load the tokenizer file {path}: {error}") from error


def _read_side_file(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SftkitError(f"cannot read {path}: {error}") from error
    if not isinstance(entries, dict):
        raise SftkitError(f"{path}: expected a JSON object")
    return entries


def _special_tokens_beside(tokenizer_json: Path,
                           names: Sequence[str] = ("eos_token", "pad_token")) -> dict[str, Any]:
    """The special tokens `names` from the HF side files; tokenizer_config.json wins."""
    found: dict[str, Any] = {}
    for filename in TOKEN_SIDE_FILES:
        side_file = tokenizer_json.parent / filename
        if not side_file.is_file():
            continue
        entries = _read_side_file(side_file)
        for name in names:
            value = _token_text(entries.get(name))
            if value is not None:
                found[name] = value
    return found


def _token_text(value: Any) -> str | list[str] | None:
    """A special token as HF writes it: the token itself or an AddedToken dict with its
    "content" (a list of them for `additional_special_tokens`)."""
    if isinstance(value, list):
        tokens = [_token_text(item) for item in value]
        return [token for token in tokens if isinstance(token, str)]
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_ids_beside(tokenizer_json: Path) -> tuple[int | None, int | None]:
    """eos and pad ids from `generation_config.json` or `config.json` (first found wins)."""
    eos = pad = None
    for filename in ID_SIDE_FILES:
        side_file = tokenizer_json.parent / filename
        if not side_file.is_file():
            continue
        entries = _read_side_file(side_file)
        if eos is None:
            eos = entries.get("eos_token_id")
            if isinstance(eos, list):  # several end ids: the first is the one we write
                eos = eos[0] if eos else None
        if pad is None:
            pad = entries.get("pad_token_id")
    return eos, pad


def _required_id(backend: Any, token: str, path: Path, field: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise SftkitError(f"{path}: {field} {token!r} is not in the vocabulary")
    return token_id
