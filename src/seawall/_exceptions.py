"""seawall's errors.

The whole hierarchy::

    Exception
    └── SeawallError                  .dependency, .reason, .report
        ├── ConfigError (ValueError)  .problems: one line each, "key.path: what is wrong, got VALUE"
        ├── RejectedError             the call was refused before anything was sent
        │   ├── CircuitOpenError      .retry_after   reason "circuit_open"
        │   ├── BulkheadFullError     .limit .detail reason "bulkhead_full"
        │   └── RateLimitedError      .retry_after   reason "rate_limited"
        ├── DeadlineExceededError (TimeoutError)     reason "deadline_exceeded"
        ├── OutcomeUnknownError       .request       reason "outcome_unknown"
        └── CallInTransactionError (RuntimeError)    reason "call_in_transaction"
    UserWarning
    └── SeawallWarning                how seawall is used (a call in a transaction)

Rejections are raised fresh for every call (never one stored instance re-raised,
whose traceback would grow on every raise), and carry no traceback of their own
beyond the raise site. Nothing is swallowed: an error caused by another keeps
it as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import CallReport

__all__ = [
    "BulkheadFullError",
    "CallInTransactionError",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceededError",
    "OutcomeUnknownError",
    "RateLimitedError",
    "RejectedError",
    "SeawallError",
    "SeawallWarning",
]


class SeawallError(Exception):
    """The root of every error seawall raises.

    ``dependency`` names the dependency the call was for (None where there is
    none), ``reason`` is a short, stable, low-cardinality code fit for a metric
    label, and ``report`` is the :class:`~seawall.CallReport` of the call, where
    there is one.
    """

    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        dependency: str | None = None,
        report: CallReport | None = None,
    ) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.report = report


class ConfigError(SeawallError, ValueError):
    """Invalid configuration; ``problems`` lists every problem found, one line each."""

    reason = "config"

    def __init__(self, problems: list[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        # (key, message, value) triples, kept so a loader can re-prefix key paths.
        self._raw: list[tuple[str, str, object]] = []
        super().__init__("\n".join(self.problems))


class RejectedError(SeawallError):
    """The call was refused by seawall before anything was sent; it fails fast."""

    def __init__(
        self,
        message: str,
        *,
        dependency: str | None = None,
        retry_after: float | None = None,
        report: CallReport | None = None,
    ) -> None:
        # No super().__init__ chain: rejections are raised by the thousand during
        # an outage, and BaseException.__new__ has already stored ``args``.
        self.dependency = dependency
        self.report = report
        #: Seconds after which a new call may be admitted, when known.
        self.retry_after = retry_after


class CircuitOpenError(RejectedError):
    """The dependency's circuit breaker is open (or forced open)."""

    reason = "circuit_open"


class BulkheadFullError(RejectedError):
    """Every slot of the dependency's bulkhead was in use (for longer than ``max_wait``).

    ``detail`` says which limit refused the call: ``"adaptive"`` for an
    adaptive limit (:class:`~seawall.AdaptiveLimit`), ``"global"`` for the cap
    across replicas (:class:`~seawall.GlobalBulkhead`), None for a static one;
    ``limit`` is that limit when the call was refused (None where unknown).
    """

    reason = "bulkhead_full"

    def __init__(
        self,
        message: str,
        *,
        dependency: str | None = None,
        report: CallReport | None = None,
        limit: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, dependency=dependency, report=report)
        #: The bulkhead's limit when it refused the call.
        self.limit = limit
        #: ``"adaptive"`` or ``"global"``: the limit that refused the call (None: a static one).
        self.detail = detail


class RateLimitedError(RejectedError):
    """The dependency's rate limit was reached."""

    reason = "rate_limited"


class DeadlineExceededError(SeawallError, TimeoutError):
    """The call's total deadline (or the ambient request deadline) ran out."""

    reason = "deadline_exceeded"


class OutcomeUnknownError(SeawallError):
    """A non-idempotent request was sent but no answer came back.

    The upstream may or may not have acted on it (a payment charged while our
    side timed out). seawall never retries such a request; the caller must
    verify through a status API, reconcile later, or compensate. ``request``
    is the :class:`httpx.Request` that was sent; ``__cause__`` is the transport
    error or deadline that cut the wait.
    """

    reason = "outcome_unknown"

    def __init__(
        self,
        message: str,
        *,
        dependency: str | None = None,
        request: Any = None,
        report: CallReport | None = None,
    ) -> None:
        super().__init__(message, dependency=dependency, report=report)
        self.request = request


class CallInTransactionError(SeawallError, RuntimeError):
    """A call went out while the calling task held a database transaction
    (``seawall.db.watch(engine, action="error")``)."""

    reason = "call_in_transaction"


class SeawallWarning(UserWarning):
    """A warning from seawall about how it is used."""
