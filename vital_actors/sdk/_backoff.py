"""Exponential backoff with jitter: a pure schedule of delays."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays ``initial * factor**k``, capped at *maximum*, each scaled by a random
    factor in ``[1 - jitter, 1]`` so that many clients cut off together do not all
    come back in the same instant."""

    initial: float = 0.25
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def delays(self) -> Iterator[float]:
        base = self.initial
        while True:
            yield base * (1 - self.jitter * self.rng.random())
            base = min(self.maximum, base * self.factor)
