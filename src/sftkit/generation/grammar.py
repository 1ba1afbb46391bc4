"""Structured output: a JSON format (any JSON object, or one JSON schema) as a per-row logits
mask, through llguidance (a Rust JSON-schema/grammar engine with no Python dependencies).

A request's format comes in the shape its API has it: Ollama's `format` ("json" or a schema)
through `ollama_format`, OpenAI's `response_format` through `openai_response_format`. Both give a
`JsonFormat` (hashable, cheap: nothing is compiled), and `JsonFormat.constraint(tokenizer,
vocab_size)` compiles it for one generation into a `GrammarConstraint`, which the decode loop
calls for its row: `mask(logits)` before sampling, `advance(token)` after, and `finished()` to
stop the row once the JSON is complete.

The JSON is written compactly with the separators `json.dumps` uses (", " and ": ") and no other
whitespace, and an object with `properties` but no `additionalProperties` gets only those (as
llama.cpp's schema grammars do): a small model cannot run away into blank lines or made-up keys,
and every reply still fits the schema as given.

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

import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from sftkit.errors import SftkitError
from sftkit.generation.config import GenerationConfig
from sftkit.generation.sampling import sample_next
from sftkit.models import Model
from sftkit.tokenizers import Tokenizer

ANY_OBJECT = {"type": "object"}
# Keywords whose values are data, not schemas, and those mapping names to schemas.
_DATA_KEYWORDS = ("enum", "const", "default", "examples")
_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


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
            # How the JSON is written: json.dumps's separators, no other whitespace.
            grammar = LLMatcher.grammar_from_json_schema(
                closed_objects(self.schema), overrides={
                    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
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


def closed_objects(schema: Any) -> Any:
    """`schema` with `"additionalProperties": false` on every object that lists `properties`
    and says nothing of other keys.

    >>> closed_objects({"type": "array", "items": {"properties": {"a": {}}}})
    {'type': 'array', 'items': {'properties': {'a': {}}, 'additionalProperties': False}}
    >>> closed_objects({"properties": {"properties": {"type": "object"}}})["properties"]
    {'properties': {'type': 'object'}}
    """
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {}
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            closed[key] = value
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):  # names are not keywords
            closed[key] = {name: closed_objects(sub) for name, sub in value.items()}
        else:
            closed[key] = closed_objects(value)
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def _schema_format(schema: dict[str, Any], source: str) -> JsonFormat:
    json_format = JsonFormat(json.dumps(schema), source)
    json_format.grammar()  # refused here, where the request is read, not mid-generation
    return json_format


class GrammarConstraint:
    """One row's grammar state (see `Constraint`); its bit mask buffer is reused at every
    token."""

    def __init__(self, grammar: str, tokenizer: Tokenizer, vocab_size: int, *,
                 source: str = "format"):
        from llguidance import LLMatcher

        self._matcher = LLMatcher(_ll_tokenizer(tokenizer), grammar)
        if self._matcher.is_error():
            raise SftkitError(f"{source}: {self._matcher.get_error()}")
        # Ids the tokenizer has and the model has; the model's extra ids are never allowed.
        self._known = min(tokenizer.vocab_size, vocab_size)
        self._bitmask = np.zeros((tokenizer.vocab_size + 31) // 32, dtype=np.int32)
        self._bitmask_bytes = self._bitmask.view(np.uint8)

    def mask(self, logits: torch.Tensor) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        # One bit per token id, little-endian within each 32-bit word. numpy, not torch: a torch
        # op this size is split over OpenMP threads, which on a busy machine wait milliseconds
        # for each other (measured: a mean of 3-30 ms per token under load, numpy's 0.1 ms).
        refused = np.unpackbits(self._bitmask_bytes, count=self._known, bitorder="little") == 0
        if logits.device.type == "cpu" and logits.dtype == torch.float32 \
                and logits.is_contiguous():
            row = logits.detach().numpy()
            np.putmask(row[:self._known], refused, -np.inf)
            row[self._known:] = -np.inf
        else:
            logits[:self._known].masked_fill_(torch.from_numpy(refused).to(logits.device),
                                              float("-inf"))
            logits[self._known:] = float("-inf")

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise SftkitError(f"token {token} is not allowed by the output format here: "
                              f"{self._matcher.get_error()}")

    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())

    def accepting(self) -> bool:
        """Whether the text so far is a complete reply (end-of-text would be allowed)."""
        return bool(self._matcher.is_accepting())


@torch.inference_mode()
def stream_constrained(model: Model, prompt: Sequence[int], config: GenerationConfig,
                       constraint: Constraint) -> Iterator[int]:
    """Yield the new tokens of one prompt, each sampled from logits `constraint` masked, until a
    stop id, `config.max_new_tokens` (or the context) or the end of the grammar.

    One row with a KV cache: the server's way to a constrained answer until the batched engine
    applies a constraint per row.

    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
    >>> constraint = ollama_format({"enum": ["yes", "no"]}).constraint(gpt2_tokenizer())
    >>> tokens = stream_constrained(model.eval(), [1, 2], GenerationConfig(), constraint)
    >>> gpt2_tokenizer().decode(list(tokens)) in ('"yes"', '"no"')
    True
    """
    device = next(model.parameters()).device
    max_new = min(config.max_new_tokens, model.config.context_length - len(prompt))
    generator = None if config.seed is None else \
        torch.Generator(device=device).manual_seed(config.seed)
    cache = model.make_kv_cache(1, len(prompt) + max_new, device=device)
    logits = model(torch.tensor([list(prompt)], device=device), kv_cache=cache,
                   input_pos=0)[:, -1]
    for step in range(max_new):
        constraint.mask(logits[0])
        token = int(sample_next(logits, config.temperature, config.top_k, config.top_p,
                                generator)[0])
        if token in config.stop_ids:
            return
        constraint.advance(token)
        yield token
        if constraint.finished() or step == max_new - 1:
            return
        logits = model(torch.tensor([[token]], device=device), kv_cache=cache,
                       input_pos=len(prompt) + step)[:, -1]


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


_LL_TOKENIZERS: weakref.WeakKeyDictionary[Tokenizer, Any] = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer: Tokenizer) -> Any:
    """llguidance's view of `tokenizer`, built once per tokenizer (about 0.2 s for 50k tokens)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    if tokenizer not in _LL_TOKENIZERS:
        _LL_TOKENIZERS[tokenizer] = LLTokenizer(TokenizerWrapper(_TokenizerView(tokenizer)))
    return _LL_TOKENIZERS[tokenizer]
