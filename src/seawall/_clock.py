"""Time, injected.

Everything in seawall that measures time (breaker windows and open time,
rate-limit tokens, retry budgets, cache ages, deadlines) asks a :class:`Clock`
given where the state is created, never ``time`` directly, so tests can move
time by hand with :class:`seawall.testing.ManualClock` instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "MonotonicClock", "MONOTONIC", "sleep_disabled", "set_waits_disabled"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time in seconds, and a way to wait on it."""

    def now(self) -> float:
        """Return the current time in seconds (any fixed origin)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait *seconds* of this clock's time."""
        ...


# Set by ``seawall.testing.disable_waits()``: backoff and Retry-After waits
# become a bare checkpoint, as in stamina's testing mode.  A plain module
# global (not a contextvar) so that it reaches tasks started elsewhere.
_waits_disabled = 0


def set_waits_disabled(delta: int) -> None:
    global _waits_disabled
    _waits_disabled += delta


def sleep_disabled() -> bool:
    return _waits_disabled > 0


class MonotonicClock:
    """The default clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "MonotonicClock()"


MONOTONIC = MonotonicClock()
