"""The settings of a generation (one request's, or a whole `generate` call's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: limits, sampling, stops.

    >>> GenerationConfig(max_new_tokens=8, temperature=0.7, seed=1).top_p
    1.0
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy (argmax)."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities sum to top_p."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end a sequence (not included in the output)."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a sequence (the output is cut before them by the caller)."""
    seed: int | None = None
    """Seeds the request's own random generator (`generate` gives prompt i seed + i), so its
    samples do not depend on the other requests in the batch."""
    batch_size: int = 64
    """`generate`: how many prompts are generated at once (KV-cache slots)."""
    repeat_penalty: float = 1.0
    """>1 makes the row's recent tokens less likely (1 = off)."""
