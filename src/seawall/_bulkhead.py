"""The bulkhead: a cap on calls in flight to one dependency, static or adaptive.

Built on :class:`anyio.CapacityLimiter`, with a fresh borrower token per call
so that one task may hold slots of several bulkheads, or nest calls, freely.
``acquire_on_behalf_of_nowait`` is the fail-fast path (about a microsecond on
a full limiter); the waiting path relies on anyio's own cancellation-safe
acquire, bounded by ``max_wait``, so a cancelled waiter never leaks a slot.

An adaptive limit (``Bulkhead.adaptive``) moves the limiter's
``total_tokens`` while calls run: the engine reports each attempt's latency
through :meth:`BulkheadHandle.observe`, the controller in ``_adaptive``
answers with the limit to enforce. Lowering it takes no slot from anyone:
calls in flight finish, and new ones are admitted once fewer than the new
limit are in flight; raising it hands free slots to waiters at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from ._adaptive import AdaptiveStatistics, Controller
from ._clock import MONOTONIC, Clock
from ._config import Bulkhead
from ._exceptions import BulkheadFullError

__all__ = ["BulkheadHandle", "BulkheadStatistics"]


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead: slots in use, the limit, and tasks waiting.

    ``limit`` is the limit enforced now; for an adaptive bulkhead it moves, and
    ``adaptive`` holds the rest of its state (the minimum RTT estimate, the last
    window's latency); it is None for a static bulkhead.
    """

    in_use: int
    limit: int
    waiting: int
    adaptive: AdaptiveStatistics | None = None

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "in_use": self.in_use,
            "limit": self.limit,
            "waiting": self.waiting,
        }
        if self.adaptive is not None:
            data["adaptive"] = self.adaptive.as_dict()
        return data


class _Slot:
    """A borrower token; it remembers its bulkhead, so a slot always goes back
    to the limiter that gave it (even if the runtime's bulkhead was replaced
    by a reload while the call ran)."""

    __slots__ = ("owner",)

    def __init__(self, owner: BulkheadHandle) -> None:
        self.owner = owner


class BulkheadHandle:
    """The runtime bulkhead of one dependency.

    Get one from ``registry.bulkhead(name)``, ``client.bulkhead`` or
    ``guard(...).bulkhead``.
    """

    __slots__ = (
        "_adaptive",
        "_in_use",
        "_limit",
        "_limiter",
        "_max_wait",
        "_message",
        "_now",
        "config",
        "dependency",
    )

    def __init__(self, config: Bulkhead, *, dependency: str, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.dependency = dependency
        self._now = clock.now
        self._max_wait = config.max_wait
        self._adaptive: Controller | None = None
        limit = config.max_concurrent
        if config.adaptive is not None:
            self._adaptive = Controller(config.adaptive, max_concurrent=limit, now=clock.now())
            limit = self._adaptive.limit
        self._limiter = anyio.CapacityLimiter(limit)
        # Our own counts: slots handed out, and the limit now. A full bulkhead
        # refuses without touching the limiter (the hot path of an outage).
        self._in_use = 0
        self._limit = limit
        self._message = (
            f"bulkhead of {dependency!r} is full ({config.max_concurrent} calls in flight)"
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<BulkheadHandle {self.dependency!r} {s.in_use}/{s.limit} waiting={s.waiting}>"

    def statistics(self) -> BulkheadStatistics:
        """A frozen snapshot: ``in_use``, ``limit``, ``waiting`` (and ``adaptive``)."""
        s = self._limiter.statistics()
        adaptive = self._adaptive
        return BulkheadStatistics(
            in_use=s.borrowed_tokens,
            limit=self._limit,
            waiting=s.tasks_waiting,
            adaptive=None if adaptive is None else adaptive.statistics(),
        )

    def try_acquire(self) -> object | None:
        """Take a slot without waiting; returns its token, or None when full."""
        if self._in_use >= self._limit:
            return None
        token = _Slot(self)
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
        token = _Slot(self)
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
        token = _Slot(self)
        with anyio.move_on_after(seconds):
            await self._limiter.acquire_on_behalf_of(token)
            self._in_use += 1
            return token
        return None

    def observe(self, latency: float, timed_out: bool) -> None:
        """An attempt that held a slot ended after *latency* seconds (an adaptive
        limit learns from it; a static bulkhead ignores it). Call it before
        releasing the attempt's slot."""
        adaptive = self._adaptive
        if adaptive is None:
            return
        limit = adaptive.sample(self._now(), latency, timed_out, self._in_use)
        if limit != self._limit:
            self._limit = limit
            # Waiters are handed the new free slots at once; a lower limit
            # takes effect as calls in flight end.
            self._limiter.total_tokens = limit

    def release(self, token: object) -> None:
        """Give back the slot of *token* (to the bulkhead that gave it)."""
        owner = token.owner if isinstance(token, _Slot) else self
        if owner is not self:
            owner.release(token)
            return
        # The limiter first: a token it does not hold raises, and leaves our count right.
        self._limiter.release_on_behalf_of(token)
        self._in_use -= 1

    def rejection(self) -> BulkheadFullError:
        """A fresh BulkheadFullError for this bulkhead (never one instance re-raised)."""
        if self._adaptive is None:
            return BulkheadFullError(self._message, dependency=self.dependency, limit=self._limit)
        return BulkheadFullError(
            f"bulkhead of {self.dependency!r} is full ({self._limit} calls in flight, "
            f"its adaptive limit now; at most {self._adaptive.max_limit})",
            dependency=self.dependency,
            limit=self._limit,
            detail="adaptive",
        )
