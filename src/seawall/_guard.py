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
from typing import ParamSpec, TypeVar

import anyio

from ._breaker import Breaker
from ._bulkhead import BulkheadHandle
from ._clock import Clock
from ._config import Policy
from ._deadline import _current as _ambient
from ._exceptions import DeadlineExceededError, RejectedError, SeawallError
from ._registry import Registry, default_registry
from ._report import CallReport, Outcome, attach
from ._retry import backoff_delay, backoff_sleep
from ._runtime import Runtime

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
    return Guard(reg._runtime(dependency, policy, clock))


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection_error"
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
    __slots__ = ("attempt_cut", "permit", "scope", "start", "token")

    def __init__(self) -> None:
        self.permit: int | None = None
        self.token: object | None = None
        self.scope: anyio.CancelScope | None = None
        self.attempt_cut = False
        self.start = 0.0


class Guard:
    """A policy applied to calls of one dependency; see :func:`guard`."""

    __slots__ = ("_rt",)

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def __repr__(self) -> str:
        return f"<Guard {self._rt.name!r}>"

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

    def _deadline(self, start: float) -> float | None:
        """The call's total deadline on the runtime's clock, or None."""
        total = self._rt.policy.timeouts.total
        ambient = _ambient.get()
        if ambient is not None:
            left = ambient[1] - ambient[0].now()
            total = left if total is None or left < total else total
        return None if total is None else start + total

    def _time_left(self, now: float) -> float | None:
        """Seconds the call could run from *now* (total timeout and ambient deadline)."""
        deadline_at = self._deadline(now)
        return None if deadline_at is None else deadline_at - now

    def _report(
        self, outcome: str, attempts: int, retries: list[str], start: float, stopped: str | None
    ) -> CallReport:
        rt = self._rt
        return CallReport(
            dependency=rt.name,
            outcome=outcome,
            attempts=attempts,
            retries=tuple(retries),
            elapsed=rt.clock.now() - start,
            breaker_state=rt.breaker.state.value if rt.breaker else None,
            timeouts=rt.policy.timeouts,
            retry_stopped=stopped,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under every layer of the policy, retry included."""
        rt = self._rt
        clock = rt.clock
        start = clock.now()
        retries: list[str] = []
        attempts = 0
        if rt.limiter is not None:
            try:
                # Never wait for a token longer than the call could then run.
                await rt.limiter.acquire(self._time_left(start))
            except RejectedError as exc:
                exc.report = self._report(exc.reason, 0, retries, start, None)
                raise
        # Measured from now, after any wait for a token: the ambient deadline's
        # time left is read now too, so ``start`` would shorten it by that wait.
        deadline_at = self._deadline(clock.now())
        retry = rt.policy.retry
        max_attempts = retry.attempts if retry is not None else 1
        attempt_limit = rt.policy.timeouts.attempt
        breaker = rt.breaker
        bulkhead = rt.bulkhead
        budget = rt.budget
        last: Exception | None = None
        while True:
            attempts += 1
            if deadline_at is not None and deadline_at - clock.now() <= 0:
                error = DeadlineExceededError(
                    f"deadline of {rt.name!r} ran out before attempt {attempts}",
                    dependency=rt.name,
                )
                error.report = self._report(error.reason, attempts - 1, retries, start, None)
                raise error from last
            permit = -1
            token = None
            try:
                if breaker is not None:
                    permit = breaker.acquire()
                if bulkhead is not None:
                    token = bulkhead.try_acquire()
                    if token is None:
                        if bulkhead.config.max_wait <= 0:
                            raise bulkhead.rejection()
                        token = await self._wait_for_slot(bulkhead, deadline_at)
            except SeawallError as exc:  # a rejection, or the deadline ran out in the queue
                if permit >= 0:
                    breaker.release(permit)  # type: ignore[union-attr]
                # The refused attempt sent nothing: it does not count.
                if last is None and rt.limiter is None:
                    # Refused outright: the outage's hot path shares one report
                    # per reason and state instead of building one per call.
                    exc.report = rt.rejection_report(exc.reason)
                    raise
                exc.report = self._report(exc.reason, attempts - 1, retries, start, None)
                if last is not None:
                    raise exc from last
                raise
            except BaseException:
                if permit >= 0:
                    breaker.release(permit)  # type: ignore[union-attr]
                raise
            if attempts == 1 and budget is not None:
                # The budget counts calls that reached the dependency: one
                # refused outright earns no retries (and costs less).
                budget.record_call()
            limit = attempt_limit
            by_deadline = False
            if deadline_at is not None:
                left = deadline_at - clock.now()
                if limit is None or left < limit:
                    limit, by_deadline = left, True
            t0 = clock.now()
            try:
                if limit is None:
                    result = await fn(*args, **kwargs)
                else:
                    with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
                        result = await fn(*args, **kwargs)
                    if scope.cancelled_caught:
                        if by_deadline:
                            raise DeadlineExceededError(
                                f"deadline of {rt.name!r} ran out during attempt {attempts}",
                                dependency=rt.name,
                            ) from last
                        raise TimeoutError(
                            f"attempt {attempts} of {rt.name!r} took longer than {attempt_limit} s"
                        )
            except Exception as exc:
                if token is not None:
                    bulkhead.release(token)  # type: ignore[union-attr]
                if permit >= 0:
                    if rt.ignore_on(exc):
                        breaker.release(permit)  # type: ignore[union-attr]
                    else:
                        # As in Resilience4j, an error that record_on does not
                        # match counts as a success.
                        breaker.record(permit, clock.now() - t0, rt.record_on(exc))  # type: ignore[union-attr]
                last = exc
                delay = self._next_delay(exc, attempts, max_attempts, deadline_at)
                if isinstance(delay, str):
                    attach(exc, self._failure_report(exc, delay, attempts, retries, start))
                    raise
                retries.append(_retry_reason(exc))
            except BaseException:
                # Cancellation is neutral: the slot and the probe permit go back.
                if token is not None:
                    bulkhead.release(token)  # type: ignore[union-attr]
                if permit >= 0:
                    breaker.release(permit)  # type: ignore[union-attr]
                raise
            else:
                if token is not None:
                    bulkhead.release(token)  # type: ignore[union-attr]
                if permit >= 0:
                    breaker.record(permit, clock.now() - t0, False)  # type: ignore[union-attr]
                return result
            # Sleep outside the except clause: no slot or permit is held here.
            await backoff_sleep(clock, delay)

    async def _wait_for_slot(self, bulkhead: BulkheadHandle, deadline_at: float | None) -> object:
        """Wait for a bulkhead slot: at most ``max_wait``, and never past the deadline.

        The queue is inside the total deadline: a call whose deadline runs out
        while it waits raises DeadlineExceededError and holds no slot.
        """
        if deadline_at is None:
            return await bulkhead.acquire()
        clock = self._rt.clock
        token: object | None = None
        with anyio.move_on_after(deadline_at - clock.now()):
            token = await bulkhead.acquire()
        if token is not None and deadline_at - clock.now() > 0:
            return token
        if token is not None:
            bulkhead.release(token)
        raise DeadlineExceededError(
            f"deadline of {self._rt.name!r} ran out waiting for a bulkhead slot",
            dependency=self._rt.name,
        )

    def _next_delay(
        self, exc: Exception, attempts: int, max_attempts: int, deadline_at: float | None
    ) -> float | str:
        """The wait before the next attempt after *exc*, or why there is none."""
        if isinstance(exc, SeawallError):
            return "not_retryable"
        if attempts >= max_attempts:
            return "attempts"
        rt = self._rt
        if not rt.retry_on(exc):
            return "not_retryable"
        delay = backoff_delay(rt.policy.retry.backoff, attempts)  # type: ignore[union-attr]
        if deadline_at is not None and rt.clock.now() + delay >= deadline_at:
            return "deadline"
        budget = rt.budget
        if budget is not None and not budget.try_spend():
            return "budget_exhausted"
        return delay

    def _failure_report(
        self, exc: Exception, stopped: str, attempts: int, retries: list[str], start: float
    ) -> CallReport:
        if isinstance(exc, SeawallError):
            outcome = exc.reason
        elif retries and stopped == "attempts":
            outcome = Outcome.RETRY_EXHAUSTED
        else:
            outcome = _failure_outcome(exc)
        reported_stop = None if stopped in ("attempts", "not_retryable") else stopped
        return self._report(outcome, attempts, retries, start, reported_stop)

    # -- async with guard: every layer but retry ------------------------------------

    async def __aenter__(self) -> Guard:
        rt = self._rt
        clock = rt.clock
        entry = _Entry()
        entry.start = start = clock.now()
        if rt.limiter is not None:
            try:
                await rt.limiter.acquire(self._time_left(start))
            except RejectedError as exc:
                exc.report = self._report(exc.reason, 0, [], start, None)
                raise
        deadline_at = self._deadline(clock.now())
        if deadline_at is not None and deadline_at - clock.now() <= 0:
            error = DeadlineExceededError(
                f"deadline of {rt.name!r} ran out before the call", dependency=rt.name
            )
            error.report = self._report(error.reason, 0, [], start, None)
            raise error
        try:
            if rt.breaker is not None:
                entry.permit = rt.breaker.acquire()
            if rt.bulkhead is not None:
                entry.token = rt.bulkhead.try_acquire() or await self._wait_for_slot(
                    rt.bulkhead, deadline_at
                )
        except BaseException as exc:
            if entry.permit is not None:
                rt.breaker.release(entry.permit)  # type: ignore[union-attr]
            if isinstance(exc, SeawallError):
                exc.report = self._report(exc.reason, 0, [], start, None)
            raise
        # The time left is read once the slot is held: the wait for it counts.
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
        _entries.set((*_entries.get(), entry))
        return self

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
        duration = rt.clock.now() - entry.start
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
        if error is not None:
            attach(error, self._report(_failure_outcome(error), 1, [], entry.start, None))
            if swallowed:
                raise error
        return False
