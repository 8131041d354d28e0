"""``seawall.guard``: a policy around any awaitable (a database, gRPC, a queue).

The layers, outermost first (the order is part of the contract)::

    rate limit          one token per logical call; retries do not spend tokens
    total deadline      Timeouts.total, capped by the ambient deadline
    retry               Retry: backoff with jitter, budget; never past the deadline
      per attempt:
      circuit breaker   admits the attempt and records its outcome
      bulkhead          a slot for the attempt only: none is held while sleeping
      attempt timeout   Timeouts.attempt; a cut attempt raises TimeoutError

``Guard.call`` and the decorator apply every layer. ``async with guard:``
applies all but retry, since a block cannot be re-run.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, NoReturn, ParamSpec, TypeVar

import anyio

from ._breaker import Breaker
from ._bulkhead import BulkheadHandle
from ._clock import Clock
from ._config import Policy
from ._decision import ANSWER, Attempt, Call, Decision, Route, Stop, retry, stop
from ._engine import deadline_of, queue_for_slot, refusal, run_call
from ._exceptions import DeadlineExceededError, OutcomeUnknownError, RejectedError, SeawallError
from ._registry import Registry, default_registry
from ._report import CallReport, Outcome, RetryReason, attach, report_of
from ._runtime import Runtime
from .telemetry._otel import log_call, start_call, success_logged

__all__ = ["Guard", "guard"]

P = ParamSpec("P")
T = TypeVar("T")


def guard(
    dependency: str,
    policy: Policy | None = None,
    *,
    registry: Registry | None = None,
    clock: Clock | None = None,
) -> Guard:
    """Protect calls to *dependency* with *policy*.

    The runtime state (breaker, bulkhead, rate limiter, retry budget) is kept in
    *registry* (a process-wide default one if None), keyed by name: every
    ``guard("db", policy)`` in a process shares one breaker. Giving a name a
    different policy or clock than it already has raises ValueError. With
    *policy* None, the policy the name was registered with is used.

    Use it as a decorator (``@guard("db", policy)``), with
    ``await g.call(fn, *args)``, or as ``async with g:`` (every layer but retry).
    """
    reg = registry if registry is not None else default_registry()
    return Guard(reg.runtime_for(dependency, policy, clock))


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return RetryReason.TIMEOUT
    if isinstance(exc, ConnectionError):
        return RetryReason.CONNECTION_ERROR
    return type(exc).__name__


def _failure_outcome(exc: BaseException) -> str:
    if isinstance(exc, SeawallError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, ConnectionError):
        return Outcome.CONNECT_ERROR
    return Outcome.ERROR


# `async with guard:` keeps each entry's state here, per task context, so one
# Guard object can be entered by many tasks (and nested) at once.
_entries: ContextVar[tuple[_Entry, ...]] = ContextVar("seawall_guard_entries", default=())


class _Entry:
    __slots__ = ("attempt_cut", "call", "permit", "scope", "t0", "token")

    def __init__(self) -> None:
        self.permit: int | None = None
        self.token: object | None = None
        self.scope: anyio.CancelScope | None = None
        self.attempt_cut = False
        self.t0 = 0.0
        self.call: Call


class _GuardCall(Call):
    __slots__ = ("args", "fn", "kwargs")
    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Guard:
    """A policy applied to calls of one dependency; see :func:`guard`.

    The front end of the call engine (``_engine``) for any awaitable: it runs
    the function, and classifies errors with ``Retry.retry_on``.
    """

    __slots__ = ("_routes", "_rt")

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._routes = (Route(runtime.breaker),)

    def __repr__(self) -> str:
        return f"<Guard {self._rt.name!r}>"

    @property
    def rt(self) -> Runtime:
        return self._rt

    @property
    def dependency(self) -> str:
        return self._rt.name

    @property
    def policy(self) -> Policy:
        return self._rt.policy

    @property
    def breaker(self) -> Breaker | None:
        """The dependency's breaker handle (None if the policy has no breaker)."""
        return self._rt.breaker

    @property
    def bulkhead(self) -> BulkheadHandle | None:
        """The dependency's bulkhead handle (None if the policy has no bulkhead)."""
        return self._rt.bulkhead

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function: every call of it goes through :meth:`call`."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under every layer of the policy, retry included."""
        rt = self._rt
        refused = refusal(rt)
        if refused is not None:
            self._refused(refused)
        call = _GuardCall(rt.clock.now(), start_call(rt.name, None, None))
        call.fn, call.args, call.kwargs = fn, args, kwargs
        tel = call.tel
        try:
            result: T = await run_call(self, call)
        except BaseException as exc:
            report = report_of(exc)
            if tel is not None:
                tel.finished(report, None, exc)
            elif report is not None:
                log_call(report, None)
            raise
        if tel is not None:
            tel.finished(self._report(call), None, None)
        elif success_logged():
            log_call(self._report(call), None)
        return result

    def _refused(self, error: RejectedError) -> NoReturn:
        """Raise a refusal found before the call was built, reported like any other."""
        rt = self._rt
        # Refused outright: one shared report per reason and state.
        report = error.report = rt.rejection_report(error.reason)
        tel = start_call(rt.name, None, None)
        if tel is not None:
            tel.finished(report, None, error)
        else:
            log_call(report, None)
        raise error

    # -- the front end's part ------------------------------------------------------

    def routes(self, call: Call) -> tuple[Route]:
        routes = self._routes
        if routes[0].breaker is not self._rt.breaker:  # reloaded
            routes = self._routes = (Route(self._rt.breaker),)
        return routes

    def hedgeable(self, call: Call) -> bool:
        # A policy with a Hedge says its calls may run twice at once.
        return True

    async def send(self, call: _GuardCall, attempt: Attempt, limit: float | None) -> Any:
        return await call.fn(*call.args, **call.kwargs)

    def cut(self, call: Call, attempt: Attempt, by_deadline: bool) -> Exception:
        rt = self._rt
        if by_deadline:
            return DeadlineExceededError(
                f"deadline of {rt.name!r} ran out during attempt {attempt.index}",
                dependency=rt.name,
            )
        return TimeoutError(
            f"attempt {attempt.index} of {rt.name!r} took longer than "
            f"{rt.policy.timeouts.attempt} s"
        )

    def judge_result(self, call: Call, attempt: Attempt, result: Any) -> tuple[Decision, bool]:
        return ANSWER, False

    def judge_error(self, call: Call, attempt: Attempt, exc: Exception) -> Decision:
        # Seawall's own errors are never retried: a refusal, a deadline, an
        # outcome unknown (an inner call may have acted) are final.
        if isinstance(exc, SeawallError) or not self._rt.retry_on(exc):
            return stop(Stop.NOT_RETRYABLE)
        return retry(_retry_reason(exc))

    def abandon(self, call: Call, attempt: Attempt) -> None:
        return None

    def keep_slot(self, result: Any, slot: Any) -> bool:
        return False

    async def retain(self, result: Any) -> Any:
        return None

    async def discard(self, result: Any) -> None:
        return None

    async def answer(self, call: Call, result: Any, stopped: str | None) -> Any:
        return result

    async def fail(self, call: Call, error: Exception, stopped: str | None, last: Any) -> NoReturn:
        rt = self._rt
        frame = call.frame
        if frame is not None and frame.unsafe and not isinstance(error, OutcomeUnknownError):
            unknown = OutcomeUnknownError(
                f"a call to {rt.name!r} sent a request that may not be resent and got no "
                "answer; it may or may not have taken effect upstream",
                dependency=rt.name,
            )
            call.outcome = Outcome.OUTCOME_UNKNOWN
            call.stopped(stopped)
            unknown.report = self._report(call)
            raise unknown from error
        if isinstance(error, RejectedError) and call.attempts == 0 and rt.limiter is None:
            # Refused outright: the outage's hot path shares one report per
            # reason and state instead of building one per call.
            error.report = rt.rejection_report(error.reason)
            raise error
        if isinstance(error, SeawallError):
            call.outcome = error.reason
        elif call.retries and stopped == Stop.ATTEMPTS:
            call.outcome = Outcome.RETRY_EXHAUSTED
        else:
            call.outcome = _failure_outcome(error)
        call.stopped(stopped if call.retries or not isinstance(error, RejectedError) else None)
        attach(error, self._report(call))
        raise error

    def _report(self, call: Call) -> CallReport:
        rt = self._rt
        return CallReport(
            dependency=rt.name,
            outcome=call.outcome,
            attempts=call.attempts,
            retries=tuple(call.retries),
            elapsed=rt.clock.now() - call.start,
            breaker_state=rt.breaker.state.value if rt.breaker else None,
            timeouts=rt.policy.timeouts,
            retry_stopped=call.retry_stopped,
            deadline_remaining=call.deadline_remaining,
            shared=rt.shared_mode(call.frame),
        )

    def _entry_report(self, outcome: str, attempts: int, start: float) -> CallReport:
        rt = self._rt
        return CallReport(
            dependency=rt.name,
            outcome=outcome,
            attempts=attempts,
            elapsed=rt.clock.now() - start,
            breaker_state=rt.breaker.state.value if rt.breaker else None,
            timeouts=rt.policy.timeouts,
            shared=rt.shared_mode(None),
        )

    # -- async with guard: every layer but retry ------------------------------------

    async def __aenter__(self) -> Guard:
        rt = self._rt
        clock = rt.clock
        entry = _Entry()
        call = entry.call = Call(clock.now(), start_call(rt.name, None, None))
        try:
            await self._enter(entry, call)
        except BaseException as exc:
            report = report_of(exc)
            if call.tel is not None:
                call.tel.finished(report, None, exc)
            elif report is not None:
                log_call(report, None)
            raise
        _entries.set((*_entries.get(), entry))
        return self

    async def _enter(self, entry: _Entry, call: Call) -> None:
        rt = self._rt
        clock = rt.clock
        deadline_at = deadline_of(rt, call)
        if rt.limiter is not None:
            try:
                await rt.limiter.acquire(None if deadline_at is None else deadline_at - clock.now())
            except RejectedError as exc:
                exc.report = self._entry_report(exc.reason, 0, call.start)
                raise
        if deadline_at is not None and deadline_at - clock.now() <= 0:
            error = DeadlineExceededError(
                f"deadline of {rt.name!r} ran out before the call", dependency=rt.name
            )
            error.report = self._entry_report(error.reason, 0, call.start)
            raise error
        try:
            if rt.breaker is not None:
                entry.permit = rt.breaker.acquire()
            if rt.bulkhead is not None:
                entry.token = rt.bulkhead.try_acquire() or await queue_for_slot(
                    call, rt, deadline_at
                )
        except BaseException as exc:
            if entry.permit is not None:
                rt.breaker.release(entry.permit)  # type: ignore[union-attr]
            if isinstance(exc, SeawallError):
                exc.report = self._entry_report(exc.reason, 0, call.start)
            raise
        # The time left is read once the slot is held: the wait for it counts.
        entry.t0 = clock.now()
        limit = rt.policy.timeouts.attempt
        if deadline_at is not None:
            left = deadline_at - clock.now()
            if limit is None or left < limit:
                limit = left
            else:
                entry.attempt_cut = True
        elif limit is not None:
            entry.attempt_cut = True
        if limit is not None:
            entry.scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
            entry.scope.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack = _entries.get()
        entry = stack[-1]
        _entries.set(stack[:-1])
        rt = self._rt
        swallowed = False
        if entry.scope is not None:
            # Not __exit__'s return value: trio's is True whenever no exception
            # came through, which would turn every finished block into a cut.
            entry.scope.__exit__(exc_type, exc, tb)
            swallowed = entry.scope.cancelled_caught
        if entry.token is not None:
            rt.bulkhead.release(entry.token)  # type: ignore[union-attr]
        call = entry.call
        duration = rt.clock.now() - entry.t0
        error: Exception | None = None
        if swallowed:
            if entry.attempt_cut:
                error = TimeoutError(f"attempt of {rt.name!r} took longer than the attempt timeout")
            else:
                error = DeadlineExceededError(
                    f"deadline of {rt.name!r} ran out during the call", dependency=rt.name
                )
        elif isinstance(exc, Exception):
            error = exc
        if entry.permit is not None:
            breaker = rt.breaker
            assert breaker is not None
            if error is None and exc is None:
                breaker.record(entry.permit, duration, False)
            elif error is None or rt.ignore_on(error):
                breaker.release(entry.permit)  # cancellation, or an ignored error
            else:
                breaker.record(entry.permit, duration, rt.record_on(error))
        report = None
        if error is not None:
            report = self._entry_report(_failure_outcome(error), 1, call.start)
            attach(error, report)
        elif exc is None:
            call.attempts = 1
            report = self._report(call)
        if call.tel is not None:
            call.tel.finished(report, None, error)
        elif report is not None and (error is not None or success_logged()):
            log_call(report, None)
        if swallowed:
            raise error  # type: ignore[misc]
        return False
