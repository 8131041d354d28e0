"""The shared rate limit: GCRA in Redis, spent from a local pocket of reserved tokens.

The policy's ``RateLimit(rate, per, burst)`` becomes global: one key holds
the theoretical arrival time (on Redis server time, so clock skew between
replicas cannot inflate it). A replica reserves ``reserve`` tokens at a time
and spends them with no I/O; unspent ones expire ``reserve_ttl`` after the
reservation was sent. In any window of ``w`` seconds all replicas together
send at most ``rate * (w + reserve_ttl) + burst`` calls (plus, at most, what
a call admitted with a reservation that arrived later than ``reserve_ttl``
adds: one round trip's worth).

A refused reservation carries the script's ``retry_after``: a call waits for
it if ``max_wait`` (and its deadline) allow, else it is refused with that
``retry_after``, and the replica asks Redis nothing more until then. While
the state is degraded, or a reservation is later than ``budget``, the replica
limits itself to its share: ``rate / live replicas`` (burst likewise).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from .._clock import Clock
from .._config import RateLimit, SharedRateLimit
from .._exceptions import RateLimitedError
from .._ratelimit import RateLimiter
from ._state import DependencyView

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedRateLimiter"]


class SharedRateLimiter:
    """The runtime rate limiter of a dependency whose limit is shared (a drop-in RateLimiter)."""

    __slots__ = (
        "_backend",
        "_burst",
        "_clock",
        "_expires",
        "_interval",
        "_live",
        "_local",
        "_next_ask",
        "_reserve",
        "_task",
        "_tokens",
        "_ttl",
        "_waiting",
        "config",
        "dependency",
        "shared",
    )

    def __init__(
        self,
        config: RateLimit,
        shared: SharedRateLimit,
        *,
        clock: Clock,
        dependency: str,
        state: SharedState,
    ) -> None:
        self.config = config
        self.shared = shared
        self.dependency = dependency
        self._backend = state
        self._clock = clock
        self._interval = config.per / config.rate
        self._burst = float(config.burst)  # type: ignore[arg-type]
        self._reserve = shared.reserve or max(1, int(0.05 / self._interval))
        self._ttl = shared.reserve_ttl
        self._tokens = 0
        self._expires = -math.inf
        self._next_ask = -math.inf
        self._task: asyncio.Task[Any] | None = None
        self._waiting = 0
        self._live = 1
        self._local = RateLimiter(config, clock=clock, dependency=dependency)

    def __repr__(self) -> str:
        return f"<SharedRateLimiter {self.dependency!r} pocket={self.available:g}>"

    # -- reading -----------------------------------------------------------------------

    @property
    def available(self) -> float:
        """Tokens reserved and still valid in the pocket (the local share's, while degraded)."""
        if not self._backend.connected:
            return self._local.available
        return float(self._tokens) if self._clock.now() < self._expires else 0.0

    def statistics(self) -> dict[str, float]:
        return {
            "available": round(self.available, 3),
            "rate": self.config.rate,
            "per": self.config.per,
            "burst": self._burst,
            "reserve": self._reserve,
            "reserve_ttl": self._ttl,
        }

    def shared_snapshot(self) -> dict[str, Any]:
        return {
            "mode": "shared" if self._backend.connected else "local_share",
            "pocket": self.available,
            "reserve": self._reserve,
            "local_share_rate": self._local.config.rate,
        }

    # -- the RateLimiter interface ----------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a token from the pocket (or the local share while degraded); never waits."""
        if not self._backend.connected:
            return self._local.try_acquire()
        if self._tokens > 0 and self._clock.now() < self._expires:
            self._tokens -= 1
            return True
        return False

    async def acquire(self, time_left: float | None = None) -> None:
        """Take a token, reserving more from Redis (within ``budget``) when the pocket is empty."""
        if self._tokens > 0 and self._clock.now() < self._expires:
            self._tokens -= 1
            return
        await self._acquire(time_left)

    async def _acquire(self, time_left: float | None) -> None:
        backend = self._backend
        max_wait = self.config.max_wait
        if time_left is not None and time_left < max_wait:
            max_wait = time_left
        waited = 0.0
        while True:
            if self._tokens > 0 and self._clock.now() < self._expires:
                self._tokens -= 1
                return
            if not backend.connected:
                backend.local_decision("rate_limit")
                return await self._local.acquire(max(0.0, max_wait - waited))
            wait = self._next_ask - self._clock.now()
            if wait <= 0:
                task = self._reservation()
                self._waiting += 1
                try:
                    result = await backend.within_budget(task, "rate_limit", self.dependency)
                finally:
                    self._waiting -= 1
                if result is None:
                    return await self._local.acquire(max(0.0, max_wait - waited))
                if self._tokens > 0:
                    # Fresh from the reply: ours even if reserve_ttl is already up.
                    self._tokens -= 1
                    return
                if result[0] > 0:
                    continue  # the others waiting on it took them all: ask again
                wait = self._next_ask - self._clock.now()
            if wait > max_wait - waited:
                raise RateLimitedError(
                    f"shared rate limit of {self.dependency!r} reached "
                    f"({self.config.rate:g} per {self.config.per:g} s across replicas)",
                    dependency=self.dependency,
                    retry_after=max(wait, 0.0),
                )
            await self._clock.sleep(wait)
            waited += wait

    def _reservation(self) -> asyncio.Task[Any]:
        if self._task is not None:
            return self._task
        backend = self._backend
        want = max(self._reserve, self._waiting + 1)
        sent_at = self._clock.now()
        task = self._task = backend.spawn(
            backend.reserve(self.dependency, want, self._interval, self._burst)
        )

        def done(task: asyncio.Task[Any]) -> None:
            self._task = None
            if task.cancelled() or task.exception() is not None:
                return
            granted, retry_after = task.result()
            if granted > 0:
                self._tokens = granted
                self._expires = sent_at + self._ttl
            else:
                self._next_ask = self._clock.now() + retry_after

        task.add_done_callback(done)
        return task

    # -- the sync task ------------------------------------------------------------------------

    def follow(self, view: DependencyView) -> None:
        """Keep the local share (used while degraded) at ``1 / live replicas`` of the limit."""
        live = max(1, view.live)
        if live == self._live:
            return
        self._live = live
        cfg = self.config
        share = RateLimit(
            rate=cfg.rate / live,
            per=cfg.per,
            burst=max(1.0, self._burst / live),
            max_wait=cfg.max_wait,
        )
        self._local = RateLimiter(share, clock=self._clock, dependency=self.dependency)
