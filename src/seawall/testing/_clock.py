"""ManualClock: time that moves only when a test says so."""

from __future__ import annotations

import anyio.lowlevel

__all__ = ["ManualClock"]


class ManualClock:
    """A :class:`seawall.Clock` whose time moves only by :meth:`advance`.

    Pass it where state is created (``Registry(clock=...)``,
    ``ResilientClient(..., clock=...)``, ``guard(..., clock=...)``) and move time
    by hand instead of sleeping: breaker open durations, windows, rate-limit
    tokens, retry budgets and cache ages all follow it. ``sleep`` advances the
    clock by the time asked (a backoff wait then takes no real time) and yields
    to the event loop once.
    """

    __slots__ = ("_now", "slept")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        #: Every duration passed to :meth:`sleep`, in order.
        self.slept: list[float] = []

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds* (>= 0)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"ManualClock.advance(seconds): must be >= 0, got {seconds!r}")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self._now += seconds
        await anyio.lowlevel.checkpoint()
