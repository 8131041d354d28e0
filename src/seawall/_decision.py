"""The engine's vocabulary: decisions, stop reasons, routes, attempts, calls, frames.

Kept apart from the loop (``_engine``) so that front ends and the hedging
round (``_hedge``) share one set of names.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ._breaker import Breaker

__all__ = [
    "ANSWER",
    "FAIR_CHANCE",
    "NEUTRAL_ATTR",
    "Act",
    "Attempt",
    "Call",
    "Decision",
    "Frame",
    "Route",
    "Stop",
    "current_frame",
    "is_timeout",
    "mark_shared_local",
    "mark_unsafe",
    "resend",
    "retry",
    "stop",
]


class Stop(enum.StrEnum):
    """Why no further attempt ran when one was wanted (``CallReport.retry_stopped``)."""

    #: Every attempt of ``Retry.attempts`` was spent (not reported: the outcome says it).
    ATTEMPTS = "attempts"
    #: The failure is not one retries help with (not reported).
    NOT_RETRYABLE = "not_retryable"
    #: The request may have reached the upstream and is not safe to resend.
    NOT_IDEMPOTENT = "not_idempotent"
    #: The request body was a stream that cannot be sent twice.
    UNREPLAYABLE_BODY = "unreplayable_body"
    #: The retry budget refused the retry.
    BUDGET_EXHAUSTED = "budget_exhausted"
    #: The wait before the next attempt would end past the deadline.
    DEADLINE = "deadline"
    #: The server asked for a wait longer than ``Retry.max_retry_after`` or the time left.
    RETRY_AFTER_TOO_LONG = "retry_after_too_long"
    #: The next attempt was refused by an open breaker.
    CIRCUIT_OPEN = "circuit_open"
    #: The next attempt was refused by a full bulkhead.
    BULKHEAD_FULL = "bulkhead_full"


#: Stops the report leaves out: the outcome already says them.
_UNREPORTED = frozenset({Stop.ATTEMPTS, Stop.NOT_RETRYABLE})


class Act(enum.Enum):
    ANSWER = "answer"
    RETRY = "retry"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: answer with it, retry (after ``delay``), or stop.

    ``reason`` is the retry reason (RETRY) or the :class:`Stop` (STOP);
    ``delay`` is a wait the server asked for (Retry-After), else the backoff's.
    """

    act: Act
    reason: str | None = None
    delay: float | None = None
    #: A resend that needs no Retry policy and spends no attempt: once per
    #: call, for a failure that says nothing of the dependency (a stale
    #: pooled connection).
    free: bool = False


ANSWER = Decision(Act.ANSWER)
_STOPS = {s: Decision(Act.STOP, s) for s in Stop}


def stop(reason: Stop) -> Decision:
    return _STOPS[reason]


def retry(reason: str, delay: float | None = None) -> Decision:
    return Decision(Act.RETRY, reason, delay)


def resend(reason: str) -> Decision:
    """At once, once per call, whatever the Retry policy (see ``Decision.free``)."""
    return Decision(Act.RETRY, reason, 0.0, free=True)


class Frame:
    """A call in progress, as seen by calls nested inside its attempts."""

    __slots__ = ("parent", "shared_local", "unsafe")

    def __init__(self, parent: Frame | None) -> None:
        self.parent = parent
        #: An inner call sent a request it may not replay and got no answer.
        self.unsafe = False
        #: Shared state (seawall.redis) was asked and did not answer within its
        #: budget: this call went on with local state (its report says so).
        self.shared_local = False


_frame: ContextVar[Frame | None] = ContextVar("seawall_frame", default=None)


def current_frame() -> ContextVar[Frame | None]:
    return _frame


def mark_shared_local() -> None:
    """Tell the call in progress (not the enclosing ones) that a shared decision
    was taken on local state: Redis was slower than the budget, or failed."""
    frame = _frame.get()
    if frame is not None:
        frame.shared_local = True


def mark_unsafe() -> None:
    """Tell every enclosing call that a request left that may not be resent."""
    frame = _frame.get()
    while frame is not None and not frame.unsafe:
        frame.unsafe = True
        frame = frame.parent


class Route:
    """Where an attempt goes: an endpoint (HTTP) and the breaker that guards it."""

    __slots__ = ("breaker", "origin", "prefix", "url")

    def __init__(self, breaker: Breaker | None, origin: str | None = None) -> None:
        self.breaker = breaker
        self.origin = origin
        self.prefix = ""
        self.url: Any = None


class Attempt:
    """One attempt of a call: where it goes, what it holds, and the front end's notes on it.

    Several may be in flight at once (hedging), so nothing attempt-specific
    lives on the :class:`Call`.
    """

    __slots__ = ("hedge", "index", "permit", "progress", "route", "slot", "span", "t0", "target")

    def __init__(self, route: Route, permit: int, slot: object | None, index: int) -> None:
        self.route = route
        self.permit = permit
        self.slot = slot
        #: 1-based, in the order attempts were admitted.
        self.index = index
        self.hedge = False
        self.t0 = 0.0
        # The front end's (HTTP: the request sent, its span, its send progress).
        self.target: Any = None
        self.span: Any = None
        self.progress: Any = None


class Call:
    """The mutable record of one logical call; the front end's report is made from it."""

    __slots__ = (
        "ambient_bound",
        "attempts",
        "breaker_before",
        "bulkhead_wait",
        "deadline_at",
        "deadline_remaining",
        "endpoint",
        "fallback",
        "frame",
        "free_resends",
        "next_route",
        "outcome",
        "retries",
        "retry_stopped",
        "roles",
        "start",
        "status_code",
        "tel",
        "winner",
    )

    def __init__(self, start: float, tel: Any) -> None:
        self.start = start
        self.tel = tel
        self.attempts = 0
        self.retries: list[str] = []
        self.endpoint: str | None = None
        self.breaker_before: str | None = None
        self.bulkhead_wait = 0.0
        self.fallback: str | None = None
        self.outcome: str = "success"
        self.status_code: int | None = None
        self.retry_stopped: str | None = None
        self.deadline_at: float | None = None
        self.deadline_remaining: float | None = None
        self.next_route = 0
        self.free_resends = 0
        self.frame: Frame | None = None
        #: Each admitted attempt's role ("first", "hedge", "retry"), kept only
        #: when the policy hedges; ``winner`` indexes it (1-based).
        self.roles: list[str] | None = None
        self.winner: int | None = None
        #: The ambient (inbound) deadline, not Timeouts.total, bounds the call.
        self.ambient_bound = False

    def stopped(self, reason: str | None) -> None:
        self.retry_stopped = None if reason is None or reason in _UNREPORTED else reason


#: Front ends set this attribute on an error that says nothing of the
#: upstream's health (the request itself was wrong, or the caller's deadline
#: gave the attempt no fair chance): the breaker counts it as neither.
NEUTRAL_ATTR = "_seawall_neutral"

#: An attempt cut by the call's deadline (not by its own attempt timeout) is
#: evidence against the dependency only if it had at least this long: a caller
#: that sends a 1 ms deadline must not open the breaker for everyone.
FAIR_CHANCE = 0.25


def is_timeout(exc: BaseException) -> bool:
    """A timeout of any kind: ours, the built-in one, or httpx's/httpx2's ``*Timeout``."""
    return isinstance(exc, TimeoutError) or type(exc).__name__.endswith("Timeout")
