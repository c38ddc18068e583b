"""Paired bootstrap confidence intervals: is a strategy's difference from `base` a real gain or noise?

Both strategies answered the same examples, so each resample draws example indices once and
scores both on them (the pairing removes the examples' own difficulty from the spread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """`diff` = aggregate(other) - aggregate(base) on all examples; [low, high] its (1 - alpha) interval."""

    diff: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0: the difference is unlikely to be noise."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"diff": self.diff, "low": self.low, "high": self.high, "n": self.n, "significant": self.significant}


def paired_bootstrap(base: Sequence[Any], other: Sequence[Any], aggregate: Callable[[np.ndarray], float | None],
                     *, resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> Interval | None:
    """Percentile interval of aggregate(other[idx]) - aggregate(base[idx]) over seeded resamples.

    Per-example values may be scalars or vectors (e.g. BLEU statistics); pairs where either side is
    None (a user metric that raised) are left out. Returns None when no pair is left.
    """
    keep = [i for i, (a, b) in enumerate(zip(base, other, strict=True)) if a is not None and b is not None]
    if not keep:
        return None
    a = np.asarray([base[i] for i in keep], dtype=np.float64)
    b = np.asarray([other[i] for i in keep], dtype=np.float64)
    diff = _diff(aggregate, a, b)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keep), size=(resamples, len(keep)))
    diffs = np.array([_diff(aggregate, a[idx], b[idx]) for idx in draws])
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return Interval(diff, float(low), float(high), len(keep))


def _diff(aggregate, a: np.ndarray, b: np.ndarray) -> float:
    x, y = aggregate(b), aggregate(a)
    return float("nan") if x is None or y is None else float(x - y)
