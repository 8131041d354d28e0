"""The ambient deadline: a time budget that every seawall call inside it respects.

The ASGI middleware sets one per inbound request; code can set one with
:func:`deadline`. It lives in a contextvar, so it follows the request through
tasks started in its context, and it only ever shrinks: a nested deadline
longer than its parent's changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._clock import MONOTONIC, Clock

__all__ = ["deadline", "deadline_remaining", "forward_header"]

#: The header in which dependencies with ``Policy(forward_deadline=True)`` send the
#: remaining budget downstream; the ASGI middleware sets it to its own
#: ``deadline_header`` for each request.
forward_header: ContextVar[str] = ContextVar("seawall_forward_header", default="Request-Timeout")

# (clock, expiry on that clock's time)
_current: ContextVar[tuple[Clock, float] | None] = ContextVar("seawall_deadline", default=None)


@contextmanager
def deadline(seconds: float, *, clock: Clock | None = None) -> Iterator[None]:
    """Cap every seawall call inside the block by *seconds* from now, in total.

    A plain (sync) context manager, usable in async code. It does not cancel
    the block itself; it caps the total timeout of each seawall call made in
    it, and a call that runs out raises :class:`~seawall.DeadlineExceededError`.
    Nested deadlines keep the earliest expiry.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds == seconds:
        raise ValueError(f"deadline(seconds): must be a number, got {seconds!r}")
    clock = clock or MONOTONIC
    expiry = clock.now() + seconds
    outer = _current.get()
    if outer is not None:
        outer_clock, outer_expiry = outer
        left = outer_expiry - outer_clock.now()
        if left < seconds:
            expiry = clock.now() + left
    token = _current.set((clock, expiry))
    try:
        yield
    finally:
        _current.reset(token)


def deadline_remaining() -> float | None:
    """Seconds left of the ambient deadline (may be negative), or None if there is none."""
    current = _current.get()
    if current is None:
        return None
    clock, expiry = current
    return expiry - clock.now()
