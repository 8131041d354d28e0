"""The shared rate limit: GCRA in Redis, spent from a local pocket of reserved tokens.

The policy's ``RateLimit(rate, per, burst)`` becomes global: one key holds
the theoretical arrival time (on Redis server time, so clock skew between
replicas cannot inflate it). A replica reserves ``reserve`` tokens at a time
and spends them with no I/O; unspent ones expire ``reserve_ttl`` after the
reservation was sent. In any window of ``w`` seconds all replicas together
send at most ``rate * (w + reserve_ttl) + burst`` calls (plus, at most, what
a call admitted with a reservation that arrived later than ``reserve_ttl``
adds: one round trip's worth).

A replica reserves the next tokens in the background before its pocket runs
out (a quarter left) or expires (a fifth of ``reserve_ttl`` left), so a
steady stream of calls seldom waits; it reserves twice what its last
reservation served, up to ``reserve``, so a quiet replica does not hold rate
that others could use.

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
        "_granted_last",
        "_interval",
        "_live",
        "_local",
        "_next_ask",
        "_refill_at",
        "_refill_before",
        "_reserve",
        "_sent_at",
        "_spare",
        "_spare_expires",
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
        # A reservation fetched ahead, spent once the current one is used up.
        self._spare = 0
        self._spare_expires = -math.inf
        self._granted_last: int | None = None
        self._sent_at = 0.0
        self._refill_at = self._reserve // 4
        self._refill_before = self._ttl / 5
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
            "gcra": "native" if self._backend.uses_native_gcra(self._burst) else "lua",
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
        now = self._clock.now()
        if self._tokens > 0 and now < self._expires:
            self._tokens -= 1
            if (
                self._tokens <= self._refill_at or self._expires - now <= self._refill_before
            ) and not self._spare:
                self._prefetch(now)  # a quarter left, or a fifth of its time
            return
        if self._take_spare(now):
            return
        await self._acquire(time_left)

    def _take_spare(self, now: float) -> bool:
        """Move on to the reservation fetched ahead, if it is valid; take a token of it."""
        if self._spare > 0 and now < self._spare_expires:
            self._tokens, self._expires = self._spare - 1, self._spare_expires
            self._granted_last, self._refill_at = self._spare, self._spare // 4
            self._spare = 0
            return True
        return False

    def _prefetch(self, now: float) -> None:
        """Reserve the next tokens before the pocket runs out (or expires), in the background."""
        if (
            self._task is None
            and self._ttl > 0
            and self._backend.connected
            and now >= self._next_ask
        ):
            self._reservation()

    async def _acquire(self, time_left: float | None) -> None:
        backend = self._backend
        max_wait = self.config.max_wait
        if time_left is not None and time_left < max_wait:
            max_wait = time_left
        waited = 0.0
        while True:
            now = self._clock.now()
            if self._tokens > 0 and now < self._expires:
                self._tokens -= 1
                return
            if self._take_spare(now):
                return
            if not backend.connected:
                backend.local_decision("rate_limit")
                return await self._local.acquire(max(0.0, max_wait - waited))
            wait = self._next_ask - now
            if wait <= 0:
                task = self._reservation()
                self._waiting += 1
                try:
                    result = await backend.within_budget(task, "rate_limit", self.dependency)
                finally:
                    self._waiting -= 1
                if result is None:
                    return await self._local.acquire(max(0.0, max_wait - waited))
                self._landed(task)  # (a no-op if its callback ran already)
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

    def _want(self) -> int:
        """How many tokens to reserve: twice what the last reservation served, up to
        ``reserve`` (a quiet replica does not hold the rate others could use)."""
        if self._granted_last is None:
            want = self._reserve
        else:
            used = self._granted_last - max(0, self._tokens)
            want = min(self._reserve, max(1, 2 * used))
        return max(want, self._waiting + 1)

    def _reservation(self) -> asyncio.Task[Any]:
        task = self._task
        if task is not None:
            if not task.done():
                return task
            self._landed(task)  # done, its callback not run yet: take its tokens now
        backend = self._backend
        self._sent_at = self._clock.now()
        task = self._task = backend.spawn(
            backend.reserve(self.dependency, self._want(), self._interval, self._burst)
        )
        task.add_done_callback(self._landed)
        return task

    def _landed(self, task: asyncio.Task[Any]) -> None:
        """Put a reservation's tokens in the pocket (or aside, if the pocket is still good)."""
        if task is not self._task:
            return  # already taken in
        self._task = None
        if task.cancelled() or task.exception() is not None:
            return
        granted, retry_after = task.result()
        now = self._clock.now()
        expires = self._sent_at + self._ttl
        if granted <= 0:
            self._next_ask = now + retry_after
        elif self._tokens > 0 and now < self._expires:
            self._spare, self._spare_expires = granted, expires
        else:
            self._tokens, self._expires = granted, expires
            self._granted_last, self._refill_at = granted, granted // 4

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
