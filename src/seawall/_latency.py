"""A streaming latency quantile per dependency: bounded memory, O(1) per call.

Latencies fall into log-spaced buckets (a 10% step from 0.1 ms to about
8 minutes: 160 counters); a quantile is the upper edge of the bucket that
holds it, so it is never more than 10% above the true value and never below
it. Counts halve every ``half_life`` observations, so the estimate follows the
dependency's recent behaviour. The quantile itself is recomputed every
``refresh`` observations (a scan of 160 counters), not per call.
"""

from __future__ import annotations

import math

__all__ = ["LatencyEstimate"]

_LOW = 1e-4
_STEP = 1.1
_BUCKETS = 160
_LOG_STEP = math.log(_STEP)


class LatencyEstimate:
    """Recent latencies of one dependency; ``quantile()`` reads the cached estimate."""

    __slots__ = ("_counts", "_estimate", "_q", "_seen", "_total", "half_life", "refresh")

    def __init__(self, q: float = 0.95, *, half_life: int = 2000, refresh: int = 32) -> None:
        self._q = q
        self._counts = [0.0] * _BUCKETS
        self._total = 0.0
        self._seen = 0
        self._estimate: float | None = None
        self.half_life = half_life
        self.refresh = refresh

    @property
    def count(self) -> float:
        """The (decayed) number of observations the estimate rests on."""
        return self._total

    def observe(self, seconds: float) -> None:
        if seconds <= _LOW:
            i = 0
        else:
            i = min(_BUCKETS - 1, 1 + int(math.log(seconds / _LOW) / _LOG_STEP))
        self._counts[i] += 1.0
        self._total += 1.0
        self._seen += 1
        if self._seen % self.half_life == 0:
            self._counts = [c / 2 for c in self._counts]
            self._total /= 2
        if self._seen % self.refresh == 0 or self._estimate is None:
            self._estimate = self._compute()

    def quantile(self) -> float | None:
        """The estimate (seconds), or None before any observation."""
        return self._estimate

    def _compute(self) -> float | None:
        if self._total <= 0:
            return None
        rank = self._q * self._total
        running = 0.0
        for i, count in enumerate(self._counts):
            running += count
            if running >= rank:
                return _upper_edge(i)
        return _upper_edge(_BUCKETS - 1)


def _upper_edge(i: int) -> float:
    return _LOW if i == 0 else _LOW * _STEP**i
