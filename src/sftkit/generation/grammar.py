"""Structured output: a JSON format (any JSON object, or one JSON schema) as a per-row logits
mask, through llguidance (a Rust JSON-schema/grammar engine with no Python dependencies).

A request's format comes in the shape its API has it: Ollama's `format` ("json" or a schema)
through `ollama_format`, OpenAI's `response_format` through `openai_response_format`. Both give a
`JsonFormat` (hashable, cheap: nothing is compiled), and `JsonFormat.constraint(tokenizer,
vocab_size)` compiles it for one generation into a `GrammarConstraint`, which the decode loop
calls for its row: `mask(logits)` before sampling, `advance(token)` after, and `finished()` to
stop the row once the JSON is complete.

The JSON is written compactly with the separators `json.dumps` uses (", " and ": ") and no other
whitespace: a small model cannot run away into blank lines, and every reply parses.

Example (a tiny random model writes a valid reply, whatever its weights):
    >>> import json, torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> _ = torch.manual_seed(0)
    >>> tokenizer = gpt2_tokenizer()
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
    >>> score = {"type": "object", "required": ["score"],
    ...          "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}}}
    >>> constraint = ollama_format(score).constraint(tokenizer, model.config.vocab_size)
    >>> ids = tokenizer.encode("Score: ")
    >>> while not constraint.finished():
    ...     logits = model(torch.tensor([ids]))[0, -1]
    ...     constraint.mask(logits)
    ...     token = int(logits.argmax())
    ...     constraint.advance(token)
    ...     ids.append(token)
    >>> sorted(json.loads(tokenizer.decode(ids[3:])))
    ['score']
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from sftkit.errors import SftkitError
from sftkit.tokenizers import Tokenizer

# How the JSON is written (llguidance's JSON options): json.dumps's separators, nothing else.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}


class Constraint(Protocol):
    """What a decode loop calls, per row, to keep its tokens inside a grammar."""

    def mask(self, logits: torch.Tensor) -> None:
        """Set the row's disallowed (V,) logits to -inf, in place."""
        ...

    def advance(self, token: int) -> None:
        """Take the token the row generated."""
        ...

    def finished(self) -> bool:
        """Whether the grammar is complete (the row stops)."""
        ...


@dataclass(frozen=True)
class JsonFormat:
    """A requested JSON output: any JSON object (`schema_json` None) or one JSON schema.

    >>> JsonFormat().schema
    {'type': 'object'}
    """

    schema_json: str | None = None
    """The schema as JSON text (so the format is hashable); None = any JSON object."""
    source: str = "format"
    """The request field it came from, for error messages."""

    @property
    def schema(self) -> dict[str, Any]:
        return ANY_OBJECT if self.schema_json is None else json.loads(self.schema_json)

    def grammar(self) -> str:
        """The llguidance grammar of this format, checked: an unsupported or invalid schema is
        an `SftkitError` naming the field.

        >>> ollama_format({"type": "object", "properties": {"a": {"type": "strin"}}}).grammar()
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: format is not a usable JSON schema: Invalid type: strin
        """
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(self.schema, overrides=JSON_LAYOUT)
        except ValueError as error:
            raise SftkitError(f"{self.source} is not a usable JSON schema: {error}") from None
        failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        if failed:
            raise SftkitError(f"{self.source} is not a usable JSON schema: "
                              f"{'; '.join(messages)}")
        return grammar

    def constraint(self, tokenizer: Tokenizer, vocab_size: int | None = None
                   ) -> GrammarConstraint:
        """A fresh constraint for one generation; `vocab_size` is the model's (its logits may
        have more ids than the tokenizer: those are never allowed)."""
        return GrammarConstraint(self.grammar(), tokenizer,
                                 tokenizer.vocab_size if vocab_size is None else vocab_size,
                                 source=self.source)


def ollama_format(value: Any) -> JsonFormat | None:
    """Ollama's `format`: "json" (any JSON object) or a JSON schema object; None/"" = free text.

    >>> ollama_format("json")
    JsonFormat(schema_json=None, source='format')
    >>> ollama_format({"type": "integer"}).schema
    {'type': 'integer'}
    >>> ollama_format("yaml")
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: format must be "json" or a JSON schema object, got 'yaml'
    """
    if value is None or value == "":
        return None
    if value == "json":
        return JsonFormat()
    if isinstance(value, dict):
        return _schema_format(value, "format")
    raise SftkitError(f'format must be "json" or a JSON schema object, got {value!r}')


def openai_response_format(value: Any) -> JsonFormat | None:
    """OpenAI's `response_format`: {"type": "text"} (or absent) = free text, {"type":
    "json_object"} = any JSON object, {"type": "json_schema", "json_schema": {"schema": ...}}.

    >>> openai_response_format({"type": "json_schema", "json_schema": {"name": "s",
    ...     "schema": {"type": "object"}}}).source
    'response_format.json_schema.schema'
    >>> openai_response_format({"type": "json_schema"})
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: response_format.json_schema must be an object holding the \
schema, got None
    """
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat(source="response_format")
    if kind == "json_schema":
        holder = value.get("json_schema")
        if not isinstance(holder, dict):
            raise SftkitError("response_format.json_schema must be an object holding the "
                              f"schema, got {holder!r}")
        schema = holder.get("schema", {})
        if not isinstance(schema, dict):
            raise SftkitError(f"response_format.json_schema.schema must be an object, "
                              f"got {schema!r}")
        return _schema_format(schema, "response_format.json_schema.schema")
    raise SftkitError('response_format must be {"type": "text"}, {"type": "json_object"} or '
                      f'{{"type": "json_schema", "json_schema": {{"schema": ...}}}}, got {value!r}')


def _schema_format(schema: dict[str, Any], source: str) -> JsonFormat:
    json_format = JsonFormat(json.dumps(schema, sort_keys=True), source)
    json_format.grammar()  # refused here, where the request is read, not mid-generation
    return json_format


class GrammarConstraint:
    """One row's grammar state (see `Constraint`); the bit mask buffers are its own and reused
    at every token, so `mask` allocates nothing."""

    def __init__(self, grammar: str, tokenizer: Tokenizer, vocab_size: int, *,
                 source: str = "format"):
        from llguidance import LLMatcher

        self._matcher = LLMatcher(_ll_tokenizer(tokenizer), grammar)
        if self._matcher.is_error():
            raise SftkitError(f"{source}: {self._matcher.get_error()}")
        words = (tokenizer.vocab_size + 31) // 32
        self._tokenizer_vocab = tokenizer.vocab_size
        self._vocab_size = vocab_size
        self._bitmask = torch.zeros(words, dtype=torch.int32)
        self._bytes = self._bitmask.view(torch.uint8)
        self._bits = torch.empty((words * 4, 8), dtype=torch.uint8)
        self._refused = torch.empty((words * 4, 8), dtype=torch.bool)

    def mask(self, logits: torch.Tensor) -> None:
        # llguidance writes one bit per token id, little-endian within each 32-bit word.
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        torch.bitwise_and(self._bytes[:, None], _BIT_VALUES, out=self._bits)
        torch.eq(self._bits, 0, out=self._refused)
        refused = self._refused.view(-1)[:min(self._tokenizer_vocab, self._vocab_size)]
        logits[:refused.numel()].masked_fill_(refused.to(logits.device), float("-inf"))
        logits[refused.numel():] = float("-inf")

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise SftkitError(f"token {token} is not allowed by the output format here: "
                              f"{self._matcher.get_error()}")

    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())

    def accepting(self) -> bool:
        """Whether the text so far is a complete reply (end-of-text would be allowed)."""
        return bool(self._matcher.is_accepting())


_BIT_VALUES = torch.tensor([1 << bit for bit in range(8)], dtype=torch.uint8)


class _TokenizerView:
    """A sftkit tokenizer as llguidance's `TokenizerWrapper` reads one."""

    def __init__(self, tokenizer: Tokenizer):
        token_bytes = tokenizer.token_bytes()
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = None
        # llguidance keeps special tokens out of text by their ids; their bytes only name them.
        self.tokens = [tokenizer.decode([index]).encode("utf-8") if data is None else data
                       for index, data in enumerate(token_bytes)]
        self.special_token_ids = [index for index, data in enumerate(token_bytes) if data is None]
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return self._encode(text)


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: Tokenizer) -> Any:
    """llguidance's view of `tokenizer`, built once per tokenizer (about 0.2 s for 50k tokens)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    return LLTokenizer(TokenizerWrapper(_TokenizerView(tokenizer)))
