"""The bulkhead: a cap on calls in flight to one dependency.

Built on :class:`anyio.CapacityLimiter`, with a fresh borrower token per call
so that one task may hold slots of several bulkheads, or nest calls, freely.
``acquire_on_behalf_of_nowait`` is the fail-fast path (about a microsecond on
a full limiter); the waiting path relies on anyio's own cancellation-safe
acquire, bounded by ``max_wait``, so a cancelled waiter never leaks a slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from ._config import Bulkhead
from ._exceptions import BulkheadFullError

__all__ = ["BulkheadHandle", "BulkheadStatistics"]


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead: slots in use, the limit, and tasks waiting."""

    in_use: int
    limit: int
    waiting: int

    def as_dict(self) -> dict[str, int]:
        return {"in_use": self.in_use, "limit": self.limit, "waiting": self.waiting}


class BulkheadHandle:
    """The runtime bulkhead of one dependency.

    Get one from ``registry.bulkhead(name)``, ``client.bulkhead`` or
    ``guard(...).bulkhead``.
    """

    __slots__ = ("_in_use", "_limit", "_limiter", "_max_wait", "_message", "config", "dependency")

    def __init__(self, config: Bulkhead, *, dependency: str) -> None:
        self.config = config
        self.dependency = dependency
        self._max_wait = config.max_wait
        self._limiter = anyio.CapacityLimiter(config.max_concurrent)
        # Our own count of slots handed out: a full bulkhead refuses without
        # touching the limiter (the hot path of an outage).
        self._in_use = 0
        self._limit = config.max_concurrent
        self._message = (
            f"bulkhead of {dependency!r} is full ({config.max_concurrent} calls in flight)"
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<BulkheadHandle {self.dependency!r} {s.in_use}/{s.limit} waiting={s.waiting}>"

    def statistics(self) -> BulkheadStatistics:
        """A frozen snapshot: ``in_use``, ``limit``, ``waiting``."""
        s = self._limiter.statistics()
        return BulkheadStatistics(
            in_use=s.borrowed_tokens, limit=int(s.total_tokens), waiting=s.tasks_waiting
        )

    def try_acquire(self) -> object | None:
        """Take a slot without waiting; returns its token, or None when full."""
        if self._in_use >= self._limit:
            return None
        token = object()
        try:
            self._limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:  # a slot is free, but waiters queue for it
            return None
        self._in_use += 1
        return token

    async def acquire(self) -> object:
        """Take a slot, waiting at most ``max_wait``; raise BulkheadFullError otherwise."""
        token = self.try_acquire()
        if token is not None:
            return token
        if self._max_wait <= 0:
            raise self.rejection()
        token = object()
        with anyio.move_on_after(self._max_wait):
            # anyio's acquire removes a cancelled waiter from its queue and
            # hands back a token granted just as the cancel landed.
            await self._limiter.acquire_on_behalf_of(token)
            self._in_use += 1
            return token
        raise self.rejection()

    async def acquire_within(self, seconds: float) -> object | None:
        """Take a slot, waiting at most *seconds* (ignoring ``max_wait``); None if none came."""
        token = self.try_acquire()
        if token is not None:
            return token
        token = object()
        with anyio.move_on_after(seconds):
            await self._limiter.acquire_on_behalf_of(token)
            self._in_use += 1
            return token
        return None

    def observe(self, latency: float, timed_out: bool) -> None:
        """An attempt that held a slot ended after *latency* seconds (an adaptive
        limit learns from it; a static bulkhead ignores it)."""

    def release(self, token: object) -> None:
        self._in_use -= 1
        self._limiter.release_on_behalf_of(token)

    def rejection(self) -> BulkheadFullError:
        """A fresh BulkheadFullError for this bulkhead (never one instance re-raised)."""
        return BulkheadFullError(self._message, dependency=self.dependency)
