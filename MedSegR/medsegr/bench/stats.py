"""The median and spread of repeated measurements (standard library only, so that a
suite's parent process can summarise without importing torch)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence


@dataclass
class Spread:
    """Median and spread of repeated measurements."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if not values:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)),
                   len(values))


def spread(values: Sequence[float], count: bool = False) -> dict[str, float]:
    """The engine suite's JSON of a spread: ``median``, ``min``, ``max`` and, with
    ``count``, ``n`` (the comparison's JSON is :class:`Spread` as it is)."""
    s = Spread.of(values)
    return {"median": s.median, "min": s.low, "max": s.high, **({"n": s.count} if count else {})}
