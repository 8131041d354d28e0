"""A token-bucket rate limiter on the injected clock."""

from __future__ import annotations

from ._clock import Clock
from ._config import RateLimit
from ._exceptions import RateLimitedError

__all__ = ["RateLimiter"]


class RateLimiter:
    """The runtime token bucket of one dependency.

    Tokens refill continuously at ``rate / per`` a second up to ``burst``. A
    call over the limit may wait for its token (``max_wait``); it reserves the
    token first (the bucket goes negative), so waiters are served in order,
    and a cancelled waiter gives its token back.
    """

    __slots__ = ("_capacity", "_clock", "_per_second", "_stamp", "_tokens", "config", "dependency")

    def __init__(self, config: RateLimit, *, clock: Clock, dependency: str) -> None:
        self.config = config
        self.dependency = dependency
        self._clock = clock
        self._per_second = config.rate / config.per
        self._capacity = float(config.burst)  # type: ignore[arg-type]
        self._tokens = self._capacity
        self._stamp = clock.now()

    def _refill(self) -> float:
        now = self._clock.now()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._per_second)
            self._stamp = now
        return self._tokens

    @property
    def available(self) -> float:
        """Tokens available now (negative while waiters hold reservations)."""
        return self._refill()

    def statistics(self) -> dict[str, float]:
        return {
            "available": round(self._refill(), 3),
            "rate": self.config.rate,
            "per": self.config.per,
            "burst": self._capacity,
        }

    def try_acquire(self) -> bool:
        """Take a token if one is there; never waits."""
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def acquire(self, time_left: float | None = None) -> None:
        """Take a token, waiting at most ``max_wait``, or raise RateLimitedError.

        ``time_left`` caps the wait further: waiting for a token the call would
        then have no time to use is refused at once.
        """
        tokens = self._refill()
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return
        wait = (1.0 - tokens) / self._per_second
        max_wait = self.config.max_wait
        if time_left is not None and time_left < max_wait:
            max_wait = time_left
        if wait > max_wait:
            raise RateLimitedError(
                f"rate limit of {self.dependency!r} reached "
                f"({self.config.rate:g} per {self.config.per:g} s)",
                dependency=self.dependency,
                retry_after=wait,
            )
        self._tokens = tokens - 1.0  # reserve: later callers queue behind us
        try:
            await self._clock.sleep(wait)
        except BaseException:
            # Cancelled: the token was never used. Refill first and cap: a
            # sleep that returned late may find the bucket already full again.
            self._tokens = min(self._capacity, self._refill() + 1.0)
            raise
