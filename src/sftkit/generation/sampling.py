"""Choosing the next token: greedy or sampled (temperature, top-k, top-p), for a whole batch
with one setting, or row by row with each request's own settings, seed and constraint.

A seeded row draws from its own `torch.Generator` on its own logits, so its tokens do not
depend on what else is in the batch.

Example:
    >>> import torch
    >>> logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.0]])
    >>> sample_next(logits).tolist()
    [1, 0]
    >>> settings = RowSampling(temperature=1.0, top_k=1)
    >>> sample_row(logits[0].clone(), settings, history=[])
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sftkit.generation.constraints import Constraint

#: How many of a row's latest tokens the repeat penalty looks at (Ollama's repeat_last_n).
REPEAT_WINDOW = 64


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token (B,) for each row of `logits` (B, V).

    >>> sample_next(torch.tensor([[0.1, 2.0, 0.3]])).tolist()
    [1]
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class RowSampling:
    """One request's sampling settings, its random generator and its constraint."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repeat_penalty: float = 1.0
    """>1 makes the tokens of the row's last `REPEAT_WINDOW` less likely (1 = off)."""
    generator: torch.Generator | None = None
    constraint: Constraint | None = None

    @property
    def plain_greedy(self) -> bool:
        """The argmax of the raw logits: the batch's one `argmax` serves this row."""
        return self.temperature == 0 and self.repeat_penalty == 1.0 and self.constraint is None


def sample_row(logits: torch.Tensor, settings: RowSampling, history: Sequence[int]) -> int:
    """The next token of one row from its (V,) `logits` (changed in place): the repeat penalty
    over `history` (the row's tokens so far), the constraint's mask, then greedy or sampled."""
    if settings.repeat_penalty != 1.0 and history:
        penalize(logits, history[-REPEAT_WINDOW:], settings.repeat_penalty)
    if settings.constraint is not None:
        settings.constraint.mask(logits)
    return int(sample_next(logits[None], settings.temperature, settings.top_k, settings.top_p,
                           settings.generator)[0])


def penalize(logits: torch.Tensor, tokens: Sequence[int], penalty: float) -> None:
    """Make `tokens` less likely in (V,) `logits`, in place: a positive logit is divided by
    `penalty`, a negative one multiplied (CTRL's repetition penalty, as llama.cpp applies it).

    >>> logits = torch.tensor([2.0, -1.0, 3.0])
    >>> penalize(logits, [0, 1, 1], 2.0)
    >>> logits.tolist()
    [1.0, -2.0, 3.0]
    """
    ids = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=logits.device)
    chosen = logits[ids]
    logits[ids] = torch.where(chosen > 0, chosen / penalty, chosen * penalty)
