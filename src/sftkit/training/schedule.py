"""Learning-rate schedules: constant (the reference) or linear warmup + cosine decay.

Example:
    >>> lr = LRSchedule(base_lr=1e-3, total_steps=100, warmup_steps=10, kind="cosine",
    ...                 min_lr_ratio=0.1)
    >>> round(lr(0), 6), round(lr(10), 6), round(lr(100), 6)
    (0.0001, 0.001, 0.0001)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "constant"
    min_lr_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        floor = self.base_lr * self.min_lr_ratio
        return floor + (self.base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
