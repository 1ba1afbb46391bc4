"""Continuous batching: a fixed number of KV-cache rows (slots), each holding one request at
its own length; a finished request's slot takes the next waiting prompt at the next step, so
the batch stays full until the queue is empty.

Each `step()`: cancelled requests leave; every live row's last token is decoded in one forward
call (each row at its own position); waiting prompts are prefilled, together in one more call,
into the free slots; then every row picks its next token with its own settings
(`RowSampling`), and the step reports it as an `Event`. Live rows stay at the front of the
cache (a finished row's slot takes the last row), so a step computes only live rows. Requests
may be added and cancelled from other threads while another runs the steps.

Example (a tiny random model; more prompts than slots):
    >>> import torch
    >>> from sftkit.generation import GenerationConfig
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           vocab_size=100, context_length=32)).eval()
    >>> batcher = ContinuousBatcher(model, slots=2)
    >>> ids = [batcher.add([1, 2, 3], GenerationConfig(max_new_tokens=n)) for n in (1, 3, 2)]
    >>> events = [event for _ in range(3) for event in batcher.step()]
    >>> [(event.request, event.done) for event in events]
    [(0, 'length'), (1, None), (1, None), (2, None), (1, 'length'), (2, 'length')]
    >>> batcher.idle
    True
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sftkit.errors import SftkitError
from sftkit.generation.config import GenerationConfig
from sftkit.generation.constraints import Constraint
from sftkit.generation.packed import packed_for_decoding
from sftkit.generation.sampling import REPEAT_WINDOW, RowSampling, sample_row
from sftkit.generation.stops import Decode, StopStrings, TokenCheck
from sftkit.models import Model


@dataclass(frozen=True)
class Event:
    """What one step did for one request."""

    request: int
    """The id `ContinuousBatcher.add` returned."""
    token: int | None
    """The new token (None: none this step: a stop token or a cancellation ended it)."""
    done: str | None = None
    """Set when the request ended at this step: "stop" (a stop token, a stop string, its
    constraint complete), "length" (its max_new_tokens or the context) or "cancelled"."""


@dataclass(eq=False)
class _Row:
    """A request, waiting or in a slot."""

    request: int
    prompt: list[int]
    max_new: int
    stop_ids: frozenset[int]
    stop_check: TokenCheck | None
    sampling: RowSampling
    tokens: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Tokens in its cache row once its last token is decoded."""
        return len(self.prompt) + len(self.tokens)

    def recent(self) -> list[int]:
        """Its last `REPEAT_WINDOW` tokens, prompt included (what a repeat penalty looks at),
        without copying the whole sequence at every step."""
        tail = self.tokens[-REPEAT_WINDOW:]
        missing = REPEAT_WINDOW - len(tail)
        return (self.prompt[-missing:] if missing else []) + tail


class ContinuousBatcher:
    """Generation for requests that come and go: `add`, `cancel`, `step` (see the module)."""

    def __init__(self, model: Model, slots: int, decode: Decode | None = None) -> None:
        if slots < 1:
            raise SftkitError(f"continuous batching needs at least one slot, got {slots}")
        # The decoding copy (oneDNN-packed linears, parameters shared): built once per batcher.
        self.model = packed_for_decoding(model)
        self.slots = slots
        self.decode = decode
        self.device = next(model.parameters()).device
        self.cache = model.make_kv_cache(slots, 1)
        self._rows: list[_Row] = []  # the live rows, in cache-row order
        self._waiting: deque[_Row] = deque()
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        """Requests in a slot."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing to do: no live row and none waiting."""
        return not self._rows and not self._waiting

    def add(self, prompt: Sequence[int], config: GenerationConfig,
            constraint: Constraint | None = None) -> int:
        """Queue a prompt with its own settings (sampling, seed, stops, max_new_tokens; the
        config's batch_size is not used); returns the request's id for its events."""
        context = self.model.config.context_length
        if not prompt:
            raise SftkitError("generation needs at least one non-empty prompt")
        if len(prompt) >= context:
            raise SftkitError(f"a prompt has {len(prompt)} tokens; the model's context holds "
                              f"{context}, so nothing can be generated after it")
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(config.seed)
        with self._lock:
            row = _Row(
                request=next(self._ids), prompt=list(prompt),
                max_new=max(0, min(config.max_new_tokens, context - len(prompt))),
                stop_ids=frozenset(config.stop_ids),
                stop_check=StopStrings(config.stop_strings).token_check(self.decode),
                sampling=RowSampling(config.temperature, config.top_k, config.top_p,
                                     config.repeat_penalty, generator, constraint))
            self._waiting.append(row)
        return row.request

    def cancel(self, request: int) -> None:
        """End a request (waiting or live): its slot is free at the next step, which reports
        it with done reason "cancelled"."""
        with self._lock:
            self._cancelled.add(request)

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """One decode step of every live row and the prefill of newly admitted ones; the events
        of every request that got a token or ended."""
        events = self._drop_cancelled()
        logits = [self._decode()] if self._rows else []
        admitted = self._admit(events)
        if admitted:
            logits.append(self._prefill(admitted))
        if logits:
            events += self._sample(torch.cat(logits))
        return events

    def _drop_cancelled(self) -> list[Event]:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            gone = [row for row in self._waiting if row.request in cancelled]
            for row in gone:
                self._waiting.remove(row)
        slots = [slot for slot, row in enumerate(self._rows) if row.request in cancelled]
        gone += [self._rows[slot] for slot in slots]
        self._remove(slots)
        return [Event(row.request, None, "cancelled") for row in gone]

    def _admit(self, events: list[Event]) -> list[_Row]:
        """Move waiting requests into the free slots (after the live rows); a request with
        nothing to generate ends at once."""
        admitted: list[_Row] = []
        with self._lock:
            while self._waiting and len(self._rows) + len(admitted) < self.slots:
                row = self._waiting.popleft()
                if row.max_new == 0:
                    events.append(Event(row.request, None, "length"))
                else:
                    admitted.append(row)
            # Room for the queue too: `generate` queues every prompt first, so it allocates once.
            longest = max((len(row.prompt) + row.max_new
                           for row in itertools.chain(admitted, self._waiting)), default=0)
        self.cache.grow(longest)
        return admitted

    def _prefill(self, admitted: list[_Row]) -> torch.Tensor:
        """The admitted prompts into the slots after the live rows, in one forward call; the
        logits (k, V) of their first new tokens.

        Prompts are right-padded: a prompt's tokens never attend to the padding after them
        (causal), and the padding's cache slots are overwritten by the row's own next tokens
        before any query of the row can attend to them."""
        lengths = [len(row.prompt) for row in admitted]
        prompts = torch.zeros((len(admitted), max(lengths)), dtype=torch.long)
        for index, row in enumerate(admitted):
            prompts[index, :len(row.prompt)] = torch.tensor(row.prompt)
        start = len(self._rows)
        hidden = self.model.forward_hidden(
            prompts.to(self.device), input_pos=0,
            kv_cache=self.cache.rows(start, start + len(admitted)))
        self._rows += admitted
        last = torch.tensor(lengths, device=self.device) - 1
        # The output head only at each prompt's last token: the others' logits are not needed.
        return self.model.lm_head(hidden[torch.arange(len(admitted)), last])

    def _decode(self) -> torch.Tensor:
        """Every live row's last token at its own position; their next logits (B, V)."""
        tokens = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self.device)
        positions = torch.tensor([[row.length - 1] for row in self._rows], device=self.device)
        return self.model(tokens, kv_cache=self.cache, input_pos=positions)[:, -1]

    def _sample(self, logits: torch.Tensor) -> list[Event]:
        """Each row's next token, its event, and the finished rows' slots freed."""
        tokens = logits.argmax(dim=-1).tolist()  # what every plain greedy row takes
        events, finished = [], []
        for slot, row in enumerate(self._rows):
            token = tokens[slot]
            if not row.sampling.plain_greedy:
                token = sample_row(logits[slot], row.sampling, row.recent())
            done = self._take(row, token)
            events.append(Event(row.request, None if token in row.stop_ids else token, done))
            if done:
                finished.append(slot)
        self._remove(finished)
        return events

    @staticmethod
    def _take(row: _Row, token: int) -> str | None:
        """Add `token` to the row; why the row ends, if it does."""
        if token in row.stop_ids:
            return "stop"
        row.tokens.append(token)
        constraint = row.sampling.constraint
        if constraint is not None:
            constraint.advance(token)
            if constraint.finished():
                return "stop"
        if row.stop_check is not None and row.stop_check(row.request, row.tokens):
            return "stop"
        return "length" if len(row.tokens) >= row.max_new else None

    def _remove(self, slots: list[int]) -> None:
        """Free `slots`: the last live row moves into each, so live rows stay at the front."""
        for slot in sorted(slots, reverse=True):
            last = len(self._rows) - 1
            if slot != last:
                self.cache.move_row(last, slot, self._rows[last].length)
                self._rows[slot] = self._rows[last]
            self._rows.pop()
