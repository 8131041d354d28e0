"""CallReport: what happened to one logical call.

Every HTTP response that went through seawall carries one in
``response.extensions["seawall"]``; every seawall error carries one in
``.report``; :func:`report_of` finds it on either, and on foreign errors (httpx
errors) raised out of a seawall call. Telemetry is built from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ._exceptions import SeawallError

__all__ = ["CallReport", "Outcome", "RetryReason", "report_of"]


class Outcome(enum.StrEnum):
    """The outcome codes of a call (strings, fit for metric labels)."""

    SUCCESS = "success"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    TRANSPORT_ERROR = "transport_error"
    CONNECT_ERROR = "connect_error"
    RETRY_EXHAUSTED = "retry_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    BULKHEAD_FULL = "bulkhead_full"
    RATE_LIMITED = "rate_limited"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: A generic (non-HTTP) guarded call raised an error that is none of the above.
    ERROR = "error"
    #: The caller cancelled the call.
    CANCELLED = "cancelled"


class RetryReason(enum.StrEnum):
    """Why an attempt was retried (``CallReport.retries``).

    A retried HTTP status is reported as ``status_<code>`` (``status_503``),
    and a guard retry on an error that is neither a timeout nor a connection
    error by the error's class name.
    """

    #: guard: a TimeoutError (the attempt timeout included).
    TIMEOUT = "timeout"
    #: guard: a ConnectionError.
    CONNECTION_ERROR = "connection_error"
    #: HTTP: the attempt timeout cut the attempt.
    ATTEMPT_TIMEOUT = "attempt_timeout"
    CONNECT_TIMEOUT = "connect_timeout"
    POOL_TIMEOUT = "pool_timeout"
    CONNECT_ERROR = "connect_error"
    READ_TIMEOUT = "read_timeout"
    WRITE_TIMEOUT = "write_timeout"
    TRANSPORT_ERROR = "transport_error"
    #: HTTP: a pooled keep-alive connection the server had closed failed
    #: before any byte of an answer (resent at once, without a backoff).
    STALE_CONNECTION = "stale_connection"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallReport:
    """What happened to one logical call through seawall.

    ``outcome`` is the result (see :class:`Outcome`); when a fallback answered,
    ``outcome`` keeps the failure that triggered it and ``fallback`` says what
    answered (``"cache"`` or ``"default"``). ``retries`` holds the reason for
    each retry seawall decided on (one more than ``attempts - 1`` when the last
    retry was then refused by an open breaker or a full bulkhead: ``outcome``
    says so); ``retry_stopped`` says why no further retry ran, when
    one was wanted (``not_idempotent``, ``unreplayable_body``,
    ``budget_exhausted``, ``deadline``, ``retry_after_too_long``, or the
    rejection that refused it: ``circuit_open``, ``bulkhead_full``).
    ``shared`` is set when the dependency shares state across replicas
    (``Policy.shared``, seawall.redis): ``"redis"`` when the shared state
    answered in time, ``"local"`` when the call went on with local state
    (shared state degraded, or slower than its budget).
    """

    dependency: str
    outcome: str
    attempts: int
    retries: tuple[str, ...] = ()
    elapsed: float = 0.0
    endpoint: str | None = None
    method: str | None = None
    status_code: int | None = None
    breaker_state_before: str | None = None
    breaker_state: str | None = None
    bulkhead_wait: float = 0.0
    fallback: str | None = None
    timeouts: Any = None
    deadline_remaining: float | None = None
    retry_stopped: str | None = None
    #: With a Hedge in the policy: each attempt's role ("first", "hedge",
    #: "retry"), in the order they were sent, and the 1-based index of the
    #: one whose answer won (None when none did).
    roles: tuple[str, ...] = ()
    winner: int | None = None
    shared: str | None = None

    def as_dict(self) -> dict[str, Any]:
        timeouts = self.timeouts
        extra: dict[str, Any] = (
            {"roles": list(self.roles), "winner": self.winner} if self.roles else {}
        )
        if self.shared is not None:
            extra["shared"] = self.shared
        return extra | {
            "dependency": self.dependency,
            "endpoint": self.endpoint,
            "method": self.method,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "attempts": self.attempts,
            "retries": list(self.retries),
            "retry_stopped": self.retry_stopped,
            "breaker_state_before": self.breaker_state_before,
            "breaker_state": self.breaker_state,
            "bulkhead_wait": self.bulkhead_wait,
            "fallback": self.fallback,
            "elapsed": self.elapsed,
            "deadline_remaining": self.deadline_remaining,
            "timeouts": None
            if timeouts is None
            else {
                k: getattr(timeouts, k)
                for k in ("connect", "read", "write", "pool", "attempt", "total")
            },
        }


# Foreign exceptions (httpx errors) cannot grow a ``report`` field of their own
# type; the report rides on an attribute under this name.
_ATTR = "_seawall_report"


def attach(exc: BaseException, report: CallReport) -> None:
    """Give *exc* its call's report: ``.report`` on ours, a private attribute on foreign ones."""
    if isinstance(exc, SeawallError):
        exc.report = report
    else:
        setattr(exc, _ATTR, report)


def report_of(obj: object) -> CallReport | None:
    """The :class:`CallReport` of a response, or of an error raised out of a seawall call.

    On an error it also looks at the error's ``response`` (and an SDK's
    ``response.raw_response``), its ``headers`` (stripe's errors, through
    ``seawall.stripe``), and follows the ``__cause__``/``__context__`` chain, so the report is found through an SDK that wraps seawall's errors
    or its responses in its own.
    """
    seen: set[int] = set()
    todo: list[object] = [obj]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen or len(seen) > 32:
            continue
        seen.add(id(item))
        found = _own_report(item)
        if found is not None:
            return found
        if isinstance(item, BaseException):
            response = getattr(item, "response", None)
            todo.append(response)
            todo.append(getattr(response, "raw_response", None))
            # stripe keeps only a response's headers on its errors (seawall.stripe
            # hands it headers that carry the report).
            todo.append(getattr(item, "headers", None))
            todo.append(item.__cause__)
            todo.append(item.__context__)
        else:
            todo.append(getattr(item, "raw_response", None))
    return None


def _own_report(obj: object) -> CallReport | None:
    extensions = getattr(obj, "extensions", None)
    if isinstance(extensions, dict):
        report = extensions.get("seawall")
        if isinstance(report, CallReport):
            return report
    report = getattr(obj, "report", None)
    if isinstance(report, CallReport):
        return report
    report = getattr(obj, _ATTR, None)
    return report if isinstance(report, CallReport) else None
