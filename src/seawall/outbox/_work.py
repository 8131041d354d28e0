"""What happens to a claimed entry: send (or verify, or compensate), judge, record.

The worker holds no connection while it calls out: it claims in a short
committed transaction, sends with nothing checked out, and records the result
in another short transaction, fenced by the lease token. Plain results are
written in groups (one statement for many rows); a result with a hook
(``on_success``, a compensator) gets a transaction of its own, in which the
hook runs.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from .._deadline import deadline
from .._exceptions import DeadlineExceededError, OutcomeUnknownError, RejectedError
from .._report import report_of
from .._retry import parse_retry_after
from . import _telemetry as tel
from ._route import OutboxRoute
from ._sql import ResultRow, SendClaim
from ._types import Entry, Failure, State, Verdict, VerdictKind

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__ = ["Claim", "Result", "Worker"]

_logger = structlog.get_logger("seawall")

#: Statuses after which the request may be sent again (the draft's 409: "still processing").
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
#: Errors of a request that never left: safe to resend, whatever the dependency.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
#: Errors of a request that was wrong: resending cannot help.
_OUR_MISTAKE = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)
_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed row: the entry, and what the worker needs beside it."""

    entry: Entry
    token: int
    resend_safe: bool
    verify_attempts: int
    compensate_attempts: int
    trace_context: str | None
    #: When the claim's lease ends (outbox clock): a send must fit before it.
    lease_until: float = float("inf")


@dataclass(slots=True)
class Result:
    """The outcome of one unit of work, to be written (fenced) by the worker."""

    claim: Claim
    row: ResultRow
    #: "success" (on_success runs in the write's transaction) or "compensate".
    hook: str | None = None
    response: Any = None
    failure: Failure | None = None
    outcome: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def claim_of(row: Any, lease_until: float = float("inf")) -> Claim:
    headers = json.loads(row["headers"]) if row["headers"] else {}
    metadata = json.loads(row["metadata"]) if row["metadata"] else None
    entry = Entry(
        id=row["id"],
        dependency=row["dependency"],
        method=row["method"],
        path=row["path"],
        headers=headers,
        body=bytes(row["body"]) if row["body"] is not None else None,
        idempotency_key=row["idempotency_key"],
        ordering_key=row["ordering_key"],
        state=State(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        metadata=metadata,
        last_status=row["last_status"],
        last_error=row["last_error"],
    )
    return Claim(
        entry=entry,
        token=row["lease_token"],
        resend_safe=bool(row["resend_safe"]),
        verify_attempts=row["verify_attempts"],
        compensate_attempts=row["compensate_attempts"],
        trace_context=row["trace_context"],
        lease_until=lease_until,
    )


def _line(exc: BaseException) -> str:
    """An error as one short line; no request headers are ever in it."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:_ERROR_CHARS]


def failure_of(entry: Entry) -> Failure:
    """The failure recorded on a failed row (for a compensator run later)."""
    reason, _, detail = (entry.last_error or "failed").partition(": ")
    return Failure(reason, entry.last_status, detail or None)


def _row(claim: Claim, state: str, **values: Any) -> ResultRow:
    """The result row of *claim*: its id and lease token, its verify count, and *values*."""
    return ResultRow(
        claim.entry.id, claim.token, state, verify_attempts=claim.verify_attempts, **values
    )


def _unchanged(claim: Claim, state: str, **values: Any) -> ResultRow:
    """*claim*'s row in *state*, with the status and error it had."""
    entry = claim.entry
    return _row(claim, state, last_status=entry.last_status, last_error=entry.last_error, **values)


class _HookError(Exception):
    """A user hook raised; ``__cause__`` is its error."""


class Worker:
    """Sends, verifies and compensates claimed entries for one dispatcher (or reconcile)."""

    def __init__(self, outbox: Outbox, owner: str) -> None:
        self.outbox = outbox
        self.owner = owner
        self.stmts = outbox._stmts
        self.clock = outbox.clock
        self.random: Callable[[], float] = random.random
        #: Dependencies refused by a breaker or rate limit, until (registry clock).
        self.blocked: dict[str, float] = {}

    # -- claims -----------------------------------------------------------------------

    async def claim(
        self, stmt: Any, now: float | None = None, params: dict[str, Any] | None = None
    ) -> list[Claim]:
        """Run one claim statement (alone: autocommit, one round trip)."""

        async def run() -> Any:
            async with self.outbox._autocommit.connect() as conn:
                return (await conn.execute(stmt, params)).mappings().all()

        return self._claimed(await shielded(run), now)

    def _claimed(self, rows: Sequence[Any], now: float | None) -> list[Claim]:
        settings = self.outbox.settings
        if now is None:
            claims = [claim_of(r) for r in rows]
        else:
            claims = [claim_of(r, now + settings(r["dependency"]).lease) for r in rows]
        for c in claims:
            tel.transition(
                c.entry.id,
                c.entry.dependency,
                None,  # a claim's RETURNING has the new row only
                str(c.entry.state),
                claim=True,
                attempt=c.entry.attempts,
            )
        return claims

    def allowed(self) -> list[str]:
        """The registry's dependencies that may be claimed now (not refusing calls)."""
        registry = self.outbox.registry
        now = registry.clock.now()
        out = []
        for name in registry.names:
            until = self.blocked.get(name)
            if until is not None:
                if until > now:
                    continue
                del self.blocked[name]
            try:
                breakers = registry.breakers(name)
            except LookupError:
                breakers = {}
            if breakers and not any(b.would_admit() for b in breakers.values()):
                continue  # every breaker open: nothing would be let through
            out.append(name)
        return out

    def _send_claim(self, limit: int) -> SendClaim | None:
        """What a claim of *limit* sends needs (None: nothing may be claimed now)."""
        if limit <= 0:
            return None
        allowed = self.allowed()
        if not allowed:
            return None
        settings = self.outbox.settings
        return SendClaim(
            now=self.clock.now(),
            limit=limit,
            owner=self.owner,
            leases={name: settings(name).lease for name in allowed},
            default_lease=settings(None).lease,
            allowed=allowed,
        )

    async def claim_sends(self, limit: int) -> list[Claim]:
        claim = self._send_claim(limit)
        if claim is None:
            return []
        stmt, params = self.stmts.claim_sends(claim)
        return await self.claim(stmt, claim.now, params)

    async def exchange(self, results: Sequence[Result], limit: int) -> tuple[int, list[Claim]]:
        """Record *results* and claim up to *limit* sends; returns (lost, claims).

        On PostgreSQL the plain results and the claim are one statement (one
        round trip); elsewhere, or with nothing to write or claim, it is
        :meth:`write` then :meth:`claim_sends`. Results with a hook are
        written after, each in its own transaction, as :meth:`write` does.
        """
        plain = [r for r in results if r.hook is None]
        claim = self._send_claim(limit) if self.stmts.dialect == "postgresql" else None
        if claim is None or not plain:
            lost = await self.write(results) if results else 0
            return lost, await self.claim_sends(limit)
        stmt, params = self.stmts.exchange([r.row for r in plain], claim)

        async def run() -> Any:
            async with self.outbox._autocommit.connect() as conn:
                return (await conn.execute(stmt, params)).mappings().all()

        rows = await shielded(run)
        lost = self._settle(plain, set(rows[0]["written"] or ()))
        claims = self._claimed([r for r in rows if r["id"] is not None], claim.now)
        return lost + await self._write_hooks(results), claims

    async def claim_verifications(self, limit: int) -> list[Claim]:
        allowed = self.allowed()
        if not allowed:
            return []
        lease = max(self.outbox.settings(n).lease for n in allowed)
        return await self.claim(
            self.stmts.claim_verifications(
                now=self.clock.now(), limit=limit, owner=self.owner, lease=lease, allowed=allowed
            )
        )

    async def claim_compensations(self, limit: int) -> list[Claim]:
        names = list(self.outbox.registry.names)
        if not names:
            return []
        lease = max(self.outbox.settings(n).lease for n in names)
        return await self.claim(
            self.stmts.claim_compensations(
                now=self.clock.now(), limit=limit, owner=self.owner, lease=lease, allowed=names
            )
        )

    async def sweep(self) -> int:
        """Expired leases of key-ignoring dependencies become unknown (verify at once)."""
        now = self.clock.now()

        async def run() -> Any:
            async with self.outbox._autocommit.connect() as conn:
                return (await conn.execute(self.stmts.sweep_expired(now=now, verify_at=now))).all()

        rows = await shielded(run)
        for entry_id, dependency, _attempts in rows:
            tel.transition(entry_id, dependency, "dispatching", "unknown", reason="lease_expired")
            tel.dispatched(dependency, "lease_expired")
        return len(rows)

    # -- sending ----------------------------------------------------------------------

    def _headers(self, entry: Entry, route: OutboxRoute) -> dict[str, str]:
        headers = dict(entry.headers)
        if route.honours_idempotency_key:
            name = self.outbox.registry.client(entry.dependency).policy.idempotency_headers[0]
            key = entry.idempotency_key
            headers[name] = f'"{key}"' if route.key_style == "sf-string" else key
        return headers

    async def send(self, claim: Claim) -> Result:
        """Send a claimed entry through its dependency's ResilientClient and judge the answer."""
        entry = claim.entry
        outbox = self.outbox
        route = outbox.settings(entry.dependency)
        now = self.clock.now()
        with tel.dispatch_span("dispatch", entry, now, claim.trace_context) as span:
            try:
                client = outbox.registry.client(entry.dependency)
                with deadline(route.send_deadline, clock=outbox.registry.clock):
                    response = await client.request(
                        entry.method,
                        entry.path,
                        content=entry.body,
                        headers=self._headers(entry, route),
                    )
            except Exception as exc:
                result = self._judge_error(claim, route, exc)
                span.ended(result.row.state, result.outcome)
            else:
                result = self._judge_response(claim, route, response)
                span.ended(
                    result.row.state, None if result.row.state == "succeeded" else result.outcome
                )
        return result

    def _judge_response(self, claim: Claim, route: OutboxRoute, response: Any) -> Result:
        status = response.status_code
        report = report_of(response)
        if report is not None and report.fallback is not None:
            # A fallback answered, not the upstream: judged as the failure behind it.
            if report.outcome in ("circuit_open", "bulkhead_full", "rate_limited", "connect_error"):
                return self._retry_later(claim, route, f"fallback_{report.outcome}", None, None)
            return self._unknown(claim, route, f"fallback_{report.outcome}", None)
        if 200 <= status < 300:
            return self._succeeded(claim, route, response, status)
        if status in RETRYABLE_STATUSES or 500 <= status < 600:
            wait = parse_retry_after(response.headers.get("retry-after"))
            return self._retry_later(claim, route, f"http_{status}", status, wait)
        return self._failed(claim, route, Failure(f"http_{status}", status, _body_line(response)))

    def _judge_error(self, claim: Claim, route: OutboxRoute, exc: Exception) -> Result:
        if isinstance(exc, RejectedError):
            if exc.retry_after:
                reg_now = self.outbox.registry.clock.now()
                self.blocked[claim.entry.dependency] = reg_now + exc.retry_after
            return self._retry_later(claim, route, exc.reason, None, exc.retry_after)
        if isinstance(exc, _OUR_MISTAKE):
            return self._failed(claim, route, Failure("invalid_request", None, _line(exc)))
        if isinstance(exc, _NOT_SENT):
            return self._retry_later(claim, route, _reason(exc), None, None)
        if isinstance(exc, DeadlineExceededError):
            report = report_of(exc)
            if report is not None and report.attempts == 0:
                return self._retry_later(claim, route, "deadline_exceeded", None, None)
            return self._unknown(claim, route, _line(exc), None)
        if isinstance(exc, LookupError):  # the dependency left the registry
            return self._retry_later(claim, route, "unknown_dependency", None, None)
        if isinstance(exc, OutcomeUnknownError | httpx.TransportError):
            return self._unknown(claim, route, _line(exc), None)
        # Anything else (an event hook, an auth flow): it may have left.
        _logger.warning(
            "seawall.outbox.send_error",
            dependency=claim.entry.dependency,
            entry_id=claim.entry.id,
            error=_line(exc),
        )
        return self._unknown(claim, route, _line(exc), None)

    # -- outcomes ---------------------------------------------------------------------

    def _succeeded(
        self, claim: Claim, route: OutboxRoute, response: Any, status: int | None
    ) -> Result:
        now = self.clock.now()
        hook = "success" if claim.entry.dependency in self.outbox._on_success else None
        row = _row(claim, State.SUCCEEDED, finished_at=now, last_status=status)
        return Result(claim, row, hook=hook, response=response, outcome="succeeded")

    def _retry_later(
        self,
        claim: Claim,
        route: OutboxRoute,
        reason: str,
        status: int | None,
        retry_after: float | None,
    ) -> Result:
        entry = claim.entry
        now = self.clock.now()
        if entry.attempts >= route.max_attempts:
            return self._failed(
                claim,
                route,
                Failure("max_attempts", status, f"{entry.attempts} attempts, last: {reason}"),
            )
        if now - entry.created_at >= route.max_age:
            return self._failed(claim, route, Failure("max_age", status, f"last: {reason}"))
        wait = route.backoff.delay(entry.attempts, self.random)
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        row = _row(
            claim, State.PENDING, next_attempt_at=now + wait, last_status=status, last_error=reason
        )
        return Result(
            claim,
            row,
            outcome=reason if status is None else "retryable_status",
            extra={"wait": wait},
        )

    def _unknown(
        self, claim: Claim, route: OutboxRoute, error: str, retry_after: float | None
    ) -> Result:
        entry = claim.entry
        now = self.clock.now()
        verify_at: float | None = None
        if entry.dependency in self.outbox._verifiers or route.honours_idempotency_key:
            verify_at = now + (route.verify_delay if retry_after is None else retry_after)
        row = _row(
            claim, State.UNKNOWN, verify_at=verify_at, last_error=f"outcome_unknown: {error}"
        )
        return Result(claim, row, outcome="unknown")

    def _failed(self, claim: Claim, route: OutboxRoute, failure: Failure) -> Result:
        now = self.clock.now()
        hook = "compensate" if claim.entry.dependency in self.outbox._compensators else None
        row = _row(
            claim,
            State.FAILED,
            finished_at=now,
            last_status=failure.status_code,
            last_error=failure.reason + (f": {failure.detail}" if failure.detail else ""),
        )
        return Result(claim, row, hook=hook, failure=failure, outcome=failure.reason)

    # -- verifying --------------------------------------------------------------------

    async def verify(self, claim: Claim) -> Result:
        """Ask the dependency's verifier what became of an entry whose outcome was unknown."""
        entry = claim.entry
        outbox = self.outbox
        route = outbox.settings(entry.dependency)
        verifier = outbox._verifiers.get(entry.dependency)
        claim = replace(claim, verify_attempts=claim.verify_attempts + 1)
        if verifier is None:
            if route.honours_idempotency_key:
                return self._resend_now(claim, "resend_after_unknown")
            row = _row(claim, State.UNKNOWN, last_error=entry.last_error)
            return Result(claim, row, outcome="unknown")
        now = self.clock.now()
        with tel.dispatch_span("verify", entry, now, claim.trace_context) as span:
            try:
                client = outbox.registry.client(entry.dependency)
                with deadline(route.send_deadline, clock=outbox.registry.clock):
                    verdict = await verifier(entry, client)
                if not isinstance(verdict, Verdict):
                    raise TypeError(
                        f"the verifier of {entry.dependency!r} returned {verdict!r}, not a seawall.outbox.Verdict"
                    )
            except Exception as exc:
                _logger.warning(
                    "seawall.outbox.verifier_error",
                    dependency=entry.dependency,
                    entry_id=entry.id,
                    error=_line(exc),
                )
                verdict = Verdict.unknown()
            result = self.apply_verdict(claim, route, verdict)
            span.ended(result.row.state, None)
        return result

    def apply_verdict(self, claim: Claim, route: OutboxRoute, verdict: Verdict) -> Result:
        entry = claim.entry
        now = self.clock.now()
        kind = verdict.kind
        if kind is VerdictKind.SUCCEEDED:
            result = self._succeeded(claim, route, verdict.response, _status_of(verdict.response))
            result.outcome = "verified_succeeded"
            return result
        if kind is VerdictKind.NOT_APPLIED:
            return self._resend_now(claim, "verified_not_applied")
        if kind is VerdictKind.FAILED:
            result = self._failed(
                claim, route, Failure("verified_failed", entry.last_status, verdict.reason)
            )
            return result
        wait = verdict.retry_after
        if wait is None:
            wait = max(route.verify_delay, route.backoff.delay(claim.verify_attempts, self.random))
        reason = None
        if now - entry.created_at >= route.max_age:
            reason = "outcome still unknown past max_age"
        row = _row(
            claim,
            State.UNKNOWN,
            verify_at=now + wait,
            last_error=entry.last_error,
            attention=reason is not None,
            attention_reason=reason,
        )
        return Result(claim, row, outcome="verified_unknown")

    def _resend_now(self, claim: Claim, reason: str) -> Result:
        row = _row(
            claim,
            State.PENDING,
            next_attempt_at=self.clock.now(),
            last_status=claim.entry.last_status,
            last_error=reason,
        )
        return Result(claim, row, outcome=reason)

    # -- writing ----------------------------------------------------------------------

    async def write(self, results: Sequence[Result]) -> int:
        """Record *results*, fenced by their lease tokens; returns how many were lost."""
        plain = [r for r in results if r.hook is None]
        lost = 0
        if plain:
            sql, params = self.stmts.results([r.row for r in plain], self.clock.now())

            async def run() -> set[int]:
                async with self.outbox._autocommit.connect() as conn:
                    return {row[0] for row in (await conn.execute(sql, params)).all()}

            lost = self._settle(plain, await shielded(run))
        return lost + await self._write_hooks(results)

    async def _write_hooks(self, results: Sequence[Result]) -> int:
        """The results with a hook, each in a transaction of its own; how many were lost."""
        lost = 0
        for r in results:
            if r.hook is not None and not await shielded(
                functools.partial(self._write_with_hook, r)
            ):
                lost += 1
        return lost

    def _settle(self, plain: Sequence[Result], ours: set[int]) -> int:
        """After a grouped write: the results written (*ours*) and those whose lease had
        passed to another (dropped, counted); returns how many were lost."""
        lost = 0
        for r in plain:
            if r.row.id in ours:
                self._written(r)
            else:
                lost += 1
                tel.lease_lost(r.claim.entry.dependency, r.row.id)
        return lost

    def _written(self, r: Result) -> None:
        entry = r.claim.entry
        state = r.row.state
        tel.transition(
            entry.id,
            entry.dependency,
            str(entry.state),
            str(state),
            attempt=entry.attempts,
            outcome=r.outcome,
            status=r.row.last_status,
            next_attempt_at=r.row.next_attempt_at,
            verify_at=r.row.verify_at,
        )
        tel.dispatched(entry.dependency, r.outcome)
        if state == State.SUCCEEDED:
            tel.succeeded_after(entry.dependency, self.clock.now() - entry.created_at)
        if r.row.attention:
            tel.attention(entry.id, entry.dependency, r.row.attention_reason or "")

    def _session(self) -> AsyncSession:
        return self.outbox._session_factory()

    async def _write_with_hook(self, r: Result) -> bool:
        """A result whose hook runs in the same transaction as its write."""
        entry = r.claim.entry
        now = self.clock.now()
        hook: Any
        args: tuple[Any, ...]
        if r.hook == "success":
            hook = self.outbox._on_success[entry.dependency]
            args = (entry, r.response)
            values = self._values(r.row, now)
        else:
            hook = self.outbox._compensators[entry.dependency]
            assert r.failure is not None
            args = (entry, r.failure)
            values = {**self._values(r.row, now), "state": State.COMPENSATED, "compensate_at": None}
        session = self._session()
        try:
            try:
                async with session.begin():
                    if not await self._fenced(session, r, values):
                        return False
                    try:
                        if r.hook == "compensate":
                            with tel.dispatch_span(
                                "compensate", entry, now, r.claim.trace_context
                            ) as span:
                                await hook(*args, session)
                                span.ended(State.COMPENSATED)
                        else:
                            await hook(*args, session)
                    except Exception as exc:
                        raise _HookError() from exc
            except _HookError as failed:
                error = failed.__cause__
                assert error is not None
                await self._hook_failed(r, session, error)
                return True
        finally:
            await session.close()
        if r.hook == "compensate":
            r.row = replace(r.row, state=State.COMPENSATED)
            r.outcome = "compensated"
        self._written(r)
        return True

    async def _hook_failed(self, r: Result, session: AsyncSession, error: BaseException) -> None:
        entry = r.claim.entry
        route = self.outbox.settings(entry.dependency)
        now = self.clock.now()
        values = self._values(r.row, now)
        _logger.warning(
            "seawall.outbox.hook_error",
            hook="on_success" if r.hook == "success" else "compensator",
            dependency=entry.dependency,
            entry_id=entry.id,
            error=_line(error),
        )
        if r.hook == "success":
            # It happened upstream: never resent, whatever the hook thinks.
            reason = f"on_success raised {_line(error)}"
            values.update(needs_attention=True, attention_reason=reason)
        else:
            tries = r.claim.compensate_attempts + 1
            values["compensate_attempts"] = tries
            if tries >= route.max_attempts:
                reason = f"the compensator raised {tries} times, last: {_line(error)}"
                values.update(compensate_at=None, needs_attention=True, attention_reason=reason)
            else:
                reason = ""
                values["compensate_at"] = now + route.backoff.delay(tries, self.random)
        async with session.begin():
            if not await self._fenced(session, r, values):
                return
        r.outcome = "hook_error"
        if reason:
            r.row = replace(r.row, attention=True, attention_reason=reason)
        self._written(r)

    async def _fenced(self, session: AsyncSession, r: Result, values: dict[str, Any]) -> bool:
        """*r*'s fenced write in *session*'s transaction; False (logged, counted) if the
        lease has passed to another."""
        entry = r.claim.entry
        stmt = self.stmts.fenced(entry.id, r.claim.token, **values)
        if (await session.execute(stmt)).first() is None:
            tel.lease_lost(entry.dependency, entry.id)
            return False
        return True

    @staticmethod
    def _values(row: ResultRow, now: float) -> dict[str, Any]:
        values: dict[str, Any] = {
            "state": row.state,
            "next_attempt_at": row.next_attempt_at,
            "verify_at": row.verify_at,
            "finished_at": row.finished_at,
            "last_status": row.last_status,
            "last_error": row.last_error,
            "verify_attempts": row.verify_attempts,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
        }
        return values

    # -- reconcile's verdicts --------------------------------------------------------

    def expire(self, claim: Claim) -> Result:
        """A pending entry past its max_age (reconcile): failed, then compensated."""
        route = self.outbox.settings(claim.entry.dependency)
        return self._failed(
            claim, route, Failure("max_age", claim.entry.last_status, "pending past max_age")
        )

    def give_back(self, claim: Claim) -> Result:
        """A claimed entry never sent (the dispatcher stopped, or its lease ran short while
        it waited for a slot): pending again, due now, its attempt not counted."""
        row = _unchanged(
            claim,
            State.PENDING,
            next_attempt_at=self.clock.now(),
            attempts=max(0, claim.entry.attempts - 1),
        )
        return Result(claim, row, outcome="given_back")

    def release(self, claim: Claim) -> Result:
        """Give a claimed unknown entry back unchanged (only a person can settle it)."""
        return Result(claim, _unchanged(claim, claim.entry.state), outcome="released")

    # -- compensations claimed later ------------------------------------------------

    def compensation(self, claim: Claim) -> Result:
        """A compensation that is due again (its last run raised)."""
        row = _unchanged(claim, State.FAILED, finished_at=self.clock.now())
        return Result(
            claim, row, hook="compensate", failure=failure_of(claim.entry), outcome="failed"
        )


_REASONS: dict[type[BaseException], str] = {
    httpx.ConnectError: "connect_error",
    httpx.ConnectTimeout: "connect_timeout",
    httpx.PoolTimeout: "pool_timeout",
    httpx.ProxyError: "proxy_error",
}


#: How long a database step may take once begun; cancellation waits for it (see shielded).
DB_STEP_TIMEOUT = 60.0
T = TypeVar("T")


async def shielded(step: Callable[[], Awaitable[T]]) -> T:
    """Run one short database step to its end even if the caller is cancelled meanwhile.

    A transaction cut by cancellation midway leaves the driver's connection
    to be torn down in the background (SQLAlchemy's async drivers); with
    aiosqlite that can hold the event loop's shutdown for good. The step is
    bounded instead: a database that does not answer in ``DB_STEP_TIMEOUT``
    raises TimeoutError. A pending cancellation is delivered right after.
    """
    with anyio.move_on_after(DB_STEP_TIMEOUT, shield=True):
        return await step()
    raise TimeoutError(f"a database step took longer than {DB_STEP_TIMEOUT} s")


def _reason(exc: BaseException) -> str:
    return _REASONS.get(type(exc), type(exc).__name__)


def _status_of(response: Any) -> int | None:
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _body_line(response: Any) -> str | None:
    try:
        text = response.text
    except Exception:
        return None
    return text.replace("\n", " ")[:_ERROR_CHARS] or None


async def run_all(jobs: Sequence[Callable[[], Awaitable[Result]]], limit: int) -> list[Result]:
    """Run *jobs* at most *limit* at a time; their results in order."""
    results: list[Result | None] = [None] * len(jobs)
    limiter = anyio.CapacityLimiter(max(1, limit))

    async def one(i: int) -> None:
        async with limiter:
            results[i] = await jobs[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(jobs)):
            tg.start_soon(one, i)
    return [r for r in results if r is not None]
