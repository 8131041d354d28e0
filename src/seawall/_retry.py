"""Retry helpers: the retry budget, backoff waits and Retry-After parsing."""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime

from ._clock import Clock, sleep_disabled
from ._config import MAX_SECONDS, Backoff, RetryBudget

__all__ = [
    "MAX_RETRY_AFTER",
    "BudgetTracker",
    "backoff_delay",
    "backoff_sleep",
    "parse_retry_after",
]

#: The longest wait a ``Retry-After`` value is read as, in seconds (1e9, about
#: 31 years: the longest duration any setting may hold). A longer delay, or a
#: date further ahead, reads as this much: the server asked for at least that
#: long. Read as is, 400 digits made an infinite float.
MAX_RETRY_AFTER = MAX_SECONDS


class BudgetTracker:
    """The runtime retry budget of one dependency (Finagle's RetryBudget).

    Calls and retries are counted in ten buckets over the budget's window; a
    retry is allowed while ``retries < ratio * calls + min_per_second * window``.
    """

    __slots__ = (
        "_calls",
        "_clock",
        "_epoch",
        "_floor",
        "_n",
        "_ratio",
        "_retries",
        "_width",
        "calls",
        "retries",
    )

    def __init__(self, config: RetryBudget, *, clock: Clock) -> None:
        self._clock = clock
        self._n = 10
        self._width = config.window / self._n
        self._ratio = config.ratio
        self._floor = config.min_per_second * config.window
        self._calls = [0] * self._n
        self._retries = [0] * self._n
        self._epoch = math.floor(clock.now() / self._width)
        self.calls = 0
        self.retries = 0

    def _roll(self) -> int:
        epoch = math.floor(self._clock.now() / self._width)
        last = self._epoch
        if epoch > last:
            n = self._n
            for e in range(last + 1, last + 1 + min(epoch - last, n)):
                i = e % n
                self.calls -= self._calls[i]
                self.retries -= self._retries[i]
                self._calls[i] = self._retries[i] = 0
            self._epoch = epoch
        return epoch % self._n

    def record_call(self) -> None:
        self._calls[self._roll()] += 1
        self.calls += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget, if it allows one."""
        i = self._roll()
        if self.retries + 1 > self._ratio * self.calls + self._floor:
            return False
        self._retries[i] += 1
        self.retries += 1
        return True


_rng = random.Random()


def backoff_delay(backoff: Backoff, retry: int) -> float:
    return backoff.delay(retry, _rng.random)


async def backoff_sleep(clock: Clock, seconds: float) -> None:
    """Wait between attempts; a no-op checkpoint under ``seawall.testing.disable_waits()``."""
    await clock.sleep(0.0 if sleep_disabled() else seconds)


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date).

    Returns None for a missing or malformed value; a date in the past gives 0;
    anything past :data:`MAX_RETRY_AFTER` gives that maximum, so the result is
    always finite.
    """
    if not value:
        return None
    value = value.strip()
    # delay-seconds is ASCII digits only: str.isdigit() also accepts "²" or "١٢",
    # which float() then rejects (ValueError) or reads as a number.
    if value.isascii() and value.isdigit():
        # float() reads 400 digits as inf: min() brings it back.
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = datetime.now(UTC).timestamp() if now_wall is None else now_wall
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)
