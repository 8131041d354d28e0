"""The outbox's values: states, verdicts, entries and errors (no SQLAlchemy here)."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from .._exceptions import SeawallError

__all__ = [
    "TERMINAL",
    "EnqueuedCall",
    "Entry",
    "Failure",
    "IdempotencyKeyReusedError",
    "OutboxError",
    "State",
    "Verdict",
    "VerdictKind",
    "WallClock",
]


class State(enum.StrEnum):
    """Where an entry stands. docs/outbox.md draws every transition."""

    #: Waiting for its next attempt (``next_attempt_at``).
    PENDING = "pending"
    #: Claimed by a dispatcher, whose lease runs until ``lease_until``.
    DISPATCHING = "dispatching"
    #: Answered 2xx (or verified so): done.
    SUCCEEDED = "succeeded"
    #: Sent, and it may or may not have happened: waits for ``verify_at``.
    UNKNOWN = "unknown"
    #: Refused for good (or out of attempts or age); a compensator, if any, is due.
    FAILED = "failed"
    #: Failed, and its compensator ran and committed.
    COMPENSATED = "compensated"
    #: Cancelled before it was sent.
    CANCELLED = "cancelled"


#: States a row never leaves by itself; retention purges these (``failed`` is kept).
TERMINAL = frozenset({State.SUCCEEDED, State.COMPENSATED, State.CANCELLED})


class OutboxError(SeawallError):
    """An outbox operation was refused."""

    reason = "outbox"


class IdempotencyKeyReusedError(OutboxError, ValueError):
    """The same idempotency key was enqueued before for another request.

    Same dependency and key, another method, path or body: the first entry
    stands, and the transaction stays usable (nothing was written).
    """

    reason = "idempotency_key_reused"

    def __init__(self, message: str, *, dependency: str, key: str, existing_id: int) -> None:
        super().__init__(message, dependency=dependency)
        self.key = key
        self.existing_id = existing_id


@dataclass(frozen=True, slots=True)
class EnqueuedCall:
    """What :meth:`Outbox.enqueue` returns.

    ``created`` is False when an entry with this dependency and idempotency key
    already existed (the same request enqueued again): ``id`` is that entry's.
    """

    id: int
    idempotency_key: str
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One outbox row, as hooks (verifier, compensator, on_success, reconciler) see it.

    Times are seconds on the outbox's clock (the epoch, by default).
    """

    id: int
    dependency: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    idempotency_key: str
    ordering_key: str | None
    state: State
    attempts: int
    created_at: float
    metadata: Mapping[str, Any] | None = None
    last_status: int | None = None
    last_error: str | None = None

    def json(self) -> Any:
        """The body decoded as JSON (None without a body)."""
        import json

        return None if self.body is None else json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an entry failed, as its compensator sees it.

    ``reason`` is a short code (``http_422``, ``max_attempts``, ``max_age``,
    ``verified_failed``, ``resolved``); ``status_code`` is the last HTTP status
    seen, if any; ``detail`` a human line.
    """

    reason: str
    status_code: int | None = None
    detail: str | None = None


class VerdictKind(enum.Enum):
    """The four verdicts."""

    SUCCEEDED = "succeeded"
    NOT_APPLIED = "not_applied"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a verifier or reconciler found out about an entry whose outcome was unknown.

    Build one with the class methods: ``Verdict.succeeded(response=None)``,
    ``Verdict.not_applied()`` (resend with the same key),
    ``Verdict.failed(reason)``, ``Verdict.unknown(retry_after=None)``.
    """

    kind: VerdictKind
    response: Any = None
    reason: str | None = None
    retry_after: float | None = None

    @classmethod
    def succeeded(cls, response: Any = None) -> Verdict:
        """It happened: the entry becomes ``succeeded`` (its on_success hook runs)."""
        return cls(VerdictKind.SUCCEEDED, response=response)

    @classmethod
    def not_applied(cls) -> Verdict:
        """It did not happen: resend now, with the same idempotency key."""
        return cls(VerdictKind.NOT_APPLIED)

    @classmethod
    def failed(cls, reason: str) -> Verdict:
        """It happened and failed, or must not be retried: ``failed``, then compensated."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"Verdict.failed(reason): must be a non-empty string, got {reason!r}")
        return cls(VerdictKind.FAILED, reason=reason)

    @classmethod
    def unknown(cls, retry_after: float | None = None) -> Verdict:
        """Still not known: verify again after *retry_after* seconds (else the backoff's)."""
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not 0 <= retry_after < 1e9
        ):
            raise ValueError(
                f"Verdict.unknown(retry_after): must be seconds in [0, 1e9) or None, got {retry_after!r}"
            )
        return cls(VerdictKind.UNKNOWN, retry_after=retry_after)


class WallClock:
    """The outbox's default clock: :func:`time.time`, shared by every dispatcher host.

    Outbox times are stored in the database and compared across processes and
    hosts, so they are wall-clock seconds since the epoch (the hosts' clocks
    must be synchronized), not the monotonic clock the rest of seawall uses.
    """

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "WallClock()"
