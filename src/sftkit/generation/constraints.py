"""The hook for structured output: a per-request object that restricts which tokens may come
next (a grammar, a JSON schema) and says when the output is complete.

The engine calls, for each row that carries one and at each step: `mask(logits)` on that row's
(V,) logits before sampling, then `advance(token)` with the token chosen, then `finished()`;
a finished constraint ends the row with done reason "stop".

Example (a constraint that allows only even tokens and is complete after two of them):
    >>> import torch
    >>> class TwoEvens:
    ...     def __init__(self) -> None:
    ...         self.count = 0
    ...     def mask(self, logits: torch.Tensor) -> None:
    ...         logits[1::2] = float("-inf")
    ...     def advance(self, token: int) -> None:
    ...         self.count += 1
    ...     def finished(self) -> bool:
    ...         return self.count == 2
    >>> constraint: Constraint = TwoEvens()
    >>> logits = torch.tensor([0.0, 5.0, 1.0])
    >>> constraint.mask(logits)
    >>> int(logits.argmax())
    2
"""

from __future__ import annotations

from typing import Protocol

import torch


class Constraint(Protocol):
    """What the engine needs from a structured-output constraint (one object per request)."""

    def mask(self, logits: torch.Tensor) -> None:
        """Set the (V,) logits of disallowed next tokens to -inf, in place."""

    def advance(self, token: int) -> None:
        """Take `token` (the one sampled from the masked logits) as generated."""

    def finished(self) -> bool:
        """The output is complete: the row stops (done reason "stop")."""
