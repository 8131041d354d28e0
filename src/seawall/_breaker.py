"""The circuit breaker's state machine and its sliding window.

Resilience4j's semantics: CLOSED while the failure and slow-call rates over a
sliding window stay under their thresholds; OPEN (fail fast) for the open
duration; then HALF_OPEN, where a fixed number of probes decide between CLOSED
(with an empty window) and OPEN again. FORCED_OPEN and DISABLED are manual.

Two properties our Python peers lack:

* Cancellation is neutral. A cancelled call is recorded neither as a success
  nor as a failure, and a cancelled half-open probe returns its permit.
* Every permit carries the breaker's *generation*, bumped at each transition:
  an outcome that arrives after the state changed under it is dropped instead
  of polluting the new state's window (a slow call begun while CLOSED cannot
  close or reopen a breaker that has since opened).

The window is aggregated: a ring of outcome codes for a count window, a ring
of per-interval buckets for a time window. Work per call is O(1) and memory is
bounded by the window size, never a list of every call.

Reading never changes anything. OpenTelemetry's gauges read ``state`` and
``statistics()`` on the metrics reader's thread, so a getter that made a
transition would change the breaker (and run its listeners) off the event loop
at every scrape. An OPEN breaker whose time is up *reads* HALF_OPEN; the
transition itself happens on the next ``acquire()`` (or manual change), on the
caller's thread.

The open time is always finite. With ``open_duration_multiplier > 1`` and no
``max_open_duration``, it grows at each consecutive opening up to
:data:`MAX_OPEN_DURATION` (one day; ``open_duration`` itself if that is
longer), never to infinity: ``retry_after`` stays a number a ``Retry-After``
header can carry, and a breaker that keeps failing still probes once a day.

An endpoint's URL is shown with its password masked (``user:[secure]@``) in
every ``repr()``, error message and :class:`Transition`; ``Breaker.endpoint``
keeps the URL as given.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ._clock import Clock
from ._config import CircuitBreaker
from ._exceptions import CircuitOpenError
from .telemetry._redact import mask_url

__all__ = ["MAX_OPEN_DURATION", "Breaker", "BreakerState", "BreakerStatistics", "Transition"]

_logger = structlog.get_logger("seawall")

#: The longest a breaker stays open when ``max_open_duration`` is not set, in
#: seconds (one day), or ``open_duration`` if that is longer: the open time of
#: ``open_duration * open_duration_multiplier ** (openings - 1)`` stops growing
#: there. Unbounded, it reached infinity after enough openings in a row, and an
#: infinite ``retry_after`` fits no ``Retry-After`` header.
MAX_OPEN_DURATION = 86_400.0


class BreakerState(enum.StrEnum):
    """A circuit breaker's state; the values are the spelling used in snapshots."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a breaker's state, as handed to ``on_transition`` listeners."""

    dependency: str
    #: The endpoint's URL, its password masked (``user:[secure]@``); None for
    #: a dependency's own breaker.
    endpoint: str | None
    from_state: BreakerState
    to_state: BreakerState
    #: Why: ``failure_rate``, ``slow_call_rate``, ``open_duration_elapsed``,
    #: ``probes_passed``, ``probes_failed``, ``forced_open``, ``forced_closed``,
    #: ``disabled`` or ``reset``.
    reason: str
    #: The clock's time of the change.
    at: float
    #: How long the breaker stays open, for a transition to OPEN.
    open_for: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a breaker's figures.

    The rates cover the calls in the current window (the probes, while
    HALF_OPEN) and are None until ``minimum_calls`` calls are in it.
    """

    state: BreakerState
    failure_rate: float | None
    slow_call_rate: float | None
    calls: int
    failures: int
    slow_calls: int
    retry_after: float | None
    consecutive_openings: int
    half_open_permits_in_use: int

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "calls": self.calls,
            "failures": self.failures,
            "slow_calls": self.slow_calls,
            "retry_after": self.retry_after,
            "consecutive_openings": self.consecutive_openings,
        }


# Outcome codes held in a count window's ring.
_PRESENT = 1
_FAILED = 2
_SLOW = 4


class _CountWindow:
    """The last ``size`` calls, as a ring of outcome codes with running totals."""

    __slots__ = ("_codes", "_next", "calls", "failures", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self._codes = bytearray(size)
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        old = self._codes[self._next]
        if old:
            self.calls -= 1
            self.failures -= (old & _FAILED) >> 1
            self.slow -= (old & _SLOW) >> 2
        self._codes[self._next] = _PRESENT | (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._next = (self._next + 1) % self.size
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) now: count windows do not age."""
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        self._codes = bytearray(self.size)
        self._next = 0
        self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """The calls of the last ``size`` seconds, in ``buckets`` equal intervals.

    A call at time t falls in interval ``floor(t / width)``; the window holds
    the newest ``buckets`` intervals, the current one included.
    """

    __slots__ = (
        "_buckets",
        "_calls",
        "_epoch",
        "_failures",
        "_slow",
        "_width",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, size: float, buckets: int = 20) -> None:
        self._buckets = buckets
        self._width = size / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets
        self._epoch: int | None = None
        self.calls = self.failures = self.slow = 0

    def roll(self, now: float) -> None:
        epoch = math.floor(now / self._width)
        last = self._epoch
        if last is None:
            self._epoch = epoch
            return
        if epoch <= last:
            return
        n = self._buckets
        for e in range(last + 1, last + 1 + min(epoch - last, n)):
            i = e % n
            self.calls -= self._calls[i]
            self.failures -= self._failures[i]
            self.slow -= self._slow[i]
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._epoch = epoch

    def totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) as ``roll(now)`` would leave them, changing nothing."""
        calls, failures, slow = self.calls, self.failures, self.slow
        last = self._epoch
        if last is None:
            return calls, failures, slow
        n = self._buckets
        # Empty when the clock is still in the newest interval: range(a, b <= a).
        for e in range(last + 1, last + 1 + min(math.floor(now / self._width) - last, n)):
            i = e % n
            calls -= self._calls[i]
            failures -= self._failures[i]
            slow -= self._slow[i]
        return calls, failures, slow

    def add(self, failed: bool, slow: bool, now: float) -> None:
        self.roll(now)
        i = self._epoch % self._buckets  # type: ignore[operator]
        self._calls[i] += 1
        self._failures[i] += failed
        self._slow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def clear(self) -> None:
        n = self._buckets
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self.calls = self.failures = self.slow = 0


class Breaker:
    """The runtime circuit breaker of one dependency (or one endpoint of it).

    Get one from ``registry.breaker(name)``, ``client.breaker`` or
    ``guard(...).breaker``; it is built from a frozen
    :class:`~seawall.CircuitBreaker` config and a clock. All of its methods are
    synchronous and never wait.

    Only the call protocol (``acquire``, ``record``, ``release``) and the manual
    methods change the breaker; they belong to the event loop's thread. The
    readers (``state``, ``retry_after``, ``statistics()``, ``would_admit()``)
    change nothing, run no listener, and may be called from any thread (a
    metrics reader's), where they see each figure as of some recent moment.

    ``_state`` is the *recorded* state, the one the last transition set: the
    engine reads ``breaker.state.value`` for call reports, where it costs one
    attribute lookup. It lags ``state`` only while an OPEN breaker's time is up
    and no call has come since.
    """

    __slots__ = (
        "_clock",
        "_consecutive",
        "_gen",
        "_half_open_done",
        "_half_open_failures",
        "_half_open_issued",
        "_half_open_slow",
        "_listeners",
        "_messages",
        "_open_for",
        "_opened_at",
        "_shown",
        "_slow_after",
        "_state",
        "_window",
        "config",
        "dependency",
        "endpoint",
    )

    def __init__(
        self,
        config: CircuitBreaker,
        *,
        clock: Clock,
        dependency: str,
        endpoint: str | None = None,
    ) -> None:
        self.config = config
        self.dependency = dependency
        self.endpoint = endpoint
        self._clock = clock
        self._slow_after = config.slow_call_duration
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(int(config.window_size))  # type: ignore[arg-type]
            if config.window == "count"
            else _TimeWindow(float(config.window_size))  # type: ignore[arg-type]
        )
        self._state = CLOSED
        self._gen = 0
        self._opened_at = 0.0
        self._open_for = 0.0
        self._consecutive = 0
        self._half_open_issued = 0
        self._half_open_done = 0
        self._half_open_failures = 0
        self._half_open_slow = 0
        self._listeners: list[Callable[[Transition], object]] = []
        # The endpoint as shown anywhere (repr, messages, transitions): no password.
        self._shown = mask_url(endpoint) if endpoint else None
        # Rejections are the hot path of an outage: their messages are built once.
        where = f" ({self._shown})" if self._shown else ""
        self._messages = {
            state: f"circuit breaker of {dependency!r}{where} is {state.value}"
            for state in BreakerState
        }

    def __repr__(self) -> str:
        where = f" endpoint={self._shown!r}" if self._shown else ""
        return f"<Breaker {self.dependency!r}{where} {self.state.value}>"

    # -- reading ---------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker whose time is up reads HALF_OPEN).

        Reading changes nothing: the OPEN -> HALF_OPEN transition, and its
        listeners, happen on the next call (or manual change).
        """
        return self._effective(self._clock.now())

    @property
    def retry_after(self) -> float | None:
        """Seconds until an OPEN breaker lets probes through; None in other states."""
        now = self._clock.now()
        return self._retry_after(self._effective(now), now)

    def statistics(self) -> BreakerStatistics:
        """A frozen snapshot of the state and the window's figures (changes nothing)."""
        now = self._clock.now()
        state = self._effective(now)
        if state is HALF_OPEN:
            # Every transition zeroes these: a pending HALF_OPEN reads no probes.
            calls, failures, slow = (
                self._half_open_done,
                self._half_open_failures,
                self._half_open_slow,
            )
            enough = calls > 0
        else:
            calls, failures, slow = self._window.totals(now)
            enough = calls >= self.config.minimum_calls
        return BreakerStatistics(
            state=state,
            failure_rate=failures / calls if enough else None,
            slow_call_rate=slow / calls if enough else None,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            retry_after=self._retry_after(state, now),
            consecutive_openings=self._consecutive,
            half_open_permits_in_use=(
                self._half_open_issued - self._half_open_done if state is HALF_OPEN else 0
            ),
        )

    # -- manual control ----------------------------------------------------------

    # Each first makes a pending OPEN -> HALF_OPEN real, so that listeners hear
    # the change from the state that ``state`` reported.

    def force_open(self) -> None:
        """Reject every call until ``force_closed()``, ``reset()`` or ``disable()``."""
        self._settle()
        self._transition(FORCED_OPEN, "forced_open")

    def force_closed(self) -> None:
        """Go to CLOSED with an empty window (the count of consecutive openings stays)."""
        self._settle()
        self._transition(CLOSED, "forced_closed")

    def disable(self) -> None:
        """Admit every call and record nothing, until ``force_closed()`` or ``reset()``."""
        self._settle()
        self._transition(DISABLED, "disabled")

    def reset(self) -> None:
        """Like ``force_closed()``, and forget the count of consecutive openings."""
        self._settle()
        self._consecutive = 0
        self._transition(CLOSED, "reset")

    def on_transition(self, callback: Callable[[Transition], object]) -> Callable[[], None]:
        """Call *callback* with a :class:`Transition` at every change of state.

        Returns a function that removes the callback. A callback that raises is
        logged and otherwise ignored: listeners observe, they never steer.
        """
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    # -- the call protocol (used by the guard and the HTTP transport) --------------

    def acquire(self) -> int:
        """Admit a call or raise :class:`CircuitOpenError`; returns the call's permit."""
        state = self._state
        if state is CLOSED or state is DISABLED:
            return self._gen
        if state is OPEN:
            left = self._opened_at + self._open_for - self._clock.now()
            if left > 0:
                raise CircuitOpenError(
                    self._messages[OPEN], dependency=self.dependency, retry_after=left
                )
            self._transition(HALF_OPEN, "open_duration_elapsed")
        elif state is FORCED_OPEN:
            raise self._rejection()
        # HALF_OPEN: only the permitted number of probes.
        if self._half_open_issued >= self.config.half_open_calls:
            raise self._rejection()
        self._half_open_issued += 1
        return self._gen

    def would_admit(self) -> bool:
        """Whether ``acquire()`` would admit a call now (takes no permit, changes nothing)."""
        state = self.state
        if state is CLOSED or state is DISABLED:
            return True
        if state is HALF_OPEN:
            return self._half_open_issued < self.config.half_open_calls
        return False

    def record(self, permit: int, duration: float, failed: bool) -> None:
        """Record the outcome of an admitted call.

        No permit belongs to an OPEN generation, so an outcome that arrives
        while the recorded state is OPEN is stale: record (and release) never
        need to settle a pending HALF_OPEN.
        """
        if permit != self._gen:
            return  # admitted under an earlier state: its outcome is stale
        slow = duration >= self._slow_after
        state = self._state
        if state is CLOSED:
            window = self._window
            window.add(failed, slow, self._clock.now())
            calls = window.calls
            if calls >= self.config.minimum_calls:
                if window.failures / calls >= self.config.failure_rate_threshold:
                    self._open("failure_rate")
                elif window.slow / calls >= self.config.slow_call_rate_threshold:
                    self._open("slow_call_rate")
        elif state is HALF_OPEN:
            self._half_open_done += 1
            self._half_open_failures += failed
            self._half_open_slow += slow
            done = self._half_open_done
            if done >= self.config.half_open_calls:
                if (
                    self._half_open_failures / done >= self.config.failure_rate_threshold
                    or self._half_open_slow / done >= self.config.slow_call_rate_threshold
                ):
                    self._open("probes_failed")
                else:
                    self._consecutive = 0
                    self._transition(CLOSED, "probes_passed")

    def release(self, permit: int) -> None:
        """Give back a permit whose call ended without an outcome (cancelled or ignored)."""
        if permit == self._gen and self._state is HALF_OPEN:
            self._half_open_issued -= 1

    # -- internals -------------------------------------------------------------

    def _effective(self, now: float) -> BreakerState:
        # The recorded state first: _open() sets the times before the state, so
        # a reader on another thread never pairs a fresh OPEN with old times.
        state = self._state
        if state is OPEN and now >= self._opened_at + self._open_for:
            return HALF_OPEN
        return state

    def _retry_after(self, state: BreakerState, now: float) -> float | None:
        if state is OPEN:
            return max(0.0, self._opened_at + self._open_for - now)
        return None

    def _settle(self) -> None:
        """Make a pending OPEN -> HALF_OPEN real (callers' path only, never a reader's)."""
        if self._effective(self._clock.now()) is not self._state:
            self._transition(HALF_OPEN, "open_duration_elapsed")

    def _rejection(self) -> CircuitOpenError:
        # OPEN rejects in acquire() itself, with the time left it computed there.
        return CircuitOpenError(
            self._messages[self._state], dependency=self.dependency, retry_after=None
        )

    def _open(self, reason: str) -> None:
        self._consecutive += 1
        cfg = self.config
        try:
            open_for = cfg.open_duration * float(cfg.open_duration_multiplier) ** (
                self._consecutive - 1
            )
        except OverflowError:  # a float power past ~1e308, after ~1000 openings in a row
            open_for = math.inf
        cap = cfg.max_open_duration
        if cap is None:
            cap = max(cfg.open_duration, MAX_OPEN_DURATION)
        open_for = min(open_for, cap)
        self._open_for = open_for
        self._opened_at = self._clock.now()
        self._transition(OPEN, reason)

    def _transition(self, to: BreakerState, reason: str) -> None:
        from_state = self._state
        self._state = to
        self._gen += 1
        self._half_open_issued = self._half_open_done = 0
        self._half_open_failures = self._half_open_slow = 0
        if to is CLOSED or to is DISABLED or to is FORCED_OPEN:
            self._window.clear()
        if not self._listeners:
            return
        event = Transition(
            dependency=self.dependency,
            endpoint=self._shown,
            from_state=from_state,
            to_state=to,
            reason=reason,
            at=self._clock.now(),
            open_for=self._open_for if to is OPEN else None,
        )
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _logger.exception("seawall.breaker.listener_failed", dependency=self.dependency)
