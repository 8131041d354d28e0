"""The call engine: one logical call from admission to its report.

Every front end (``seawall.guard``, the HTTP transports, later the outbox
dispatcher) runs its calls through :func:`run_call`; it supplies a
:class:`FrontEnd` that does the I/O of an attempt and classifies its result,
while the engine owns the order of the layers, the deadline, the retry loop
and the bookkeeping. The layers, outermost first::

    rate limit          one token per logical call; the wait is bounded by the deadline
    total deadline      Timeouts.total capped by the ambient deadline, from the call's start
    retry               decisions are values (Decision); backoff, Retry-After, budget
      per attempt:
      route             the endpoint and breaker (the first whose breaker admits)
      circuit breaker   admits the attempt and records its outcome
      bulkhead          a slot for the attempt only, or for a streamed answer's life
      attempt timeout   Timeouts.attempt capped by the time left
    fallback            the front end's (HTTP: a stale cached response or a default)

Every wait (the token, the bulkhead queue, each attempt, each backoff) ends by
the deadline: a wait that cannot end in the time left is refused at once.

Nested calls: each call publishes a :class:`Frame` in a contextvar for the
length of its attempts. An inner HTTP call that sent a request it may not
replay, and was then cut by the outer call, marks the outer frames
``unsafe``; the outer call then never retries and ends in
OutcomeUnknownError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio

from ._breaker import Breaker
from ._deadline import _current as _ambient
from ._decision import (
    FAIR_CHANCE,
    NEUTRAL_ATTR,
    Act,
    Attempt,
    Call,
    Decision,
    Frame,
    Route,
    Stop,
    current_frame,
    is_timeout,
)
from ._exceptions import BulkheadFullError, DeadlineExceededError, RejectedError, SeawallError
from ._retry import backoff_delay, backoff_sleep
from ._runtime import Runtime

__all__ = [
    "FrontEnd",
    "admit",
    "call_hooks",
    "deadline_of",
    "queue_for_slot",
    "refusal",
    "run_attempt",
    "run_call",
]


class FrontEnd(Protocol):
    """What a front end supplies to the engine (see ``_guard`` and ``_transport``).

    The engine decides; the front end does the I/O of an attempt and judges
    what came back. ``answer`` and ``fail`` end the call: they return the
    call's value (a response, a fallback) or raise.
    """

    @property
    def rt(self) -> Runtime: ...

    def routes(self, call: Any) -> Sequence[Route]: ...

    def hedgeable(self, call: Any) -> bool: ...

    async def send(self, call: Any, attempt: Attempt, limit: float | None) -> Any: ...

    def cut(self, call: Any, attempt: Attempt, by_deadline: bool) -> Exception: ...

    def judge_result(self, call: Any, attempt: Attempt, result: Any) -> tuple[Decision, bool]: ...

    def judge_error(self, call: Any, attempt: Attempt, exc: Exception) -> Decision: ...

    def abandon(self, call: Any, attempt: Attempt) -> None: ...

    def keep_slot(self, result: Any, held: Any) -> bool: ...

    async def retain(self, result: Any) -> Any: ...

    async def discard(self, result: Any) -> None: ...

    async def answer(self, call: Any, result: Any, stopped: str | None) -> Any: ...

    async def fail(self, call: Any, error: Exception, stopped: str | None, last: Any) -> Any: ...


#: Called with the dependency's name as each call starts, before anything else
#: (``seawall.db.watch`` checks that no database transaction is held across
#: an outbound call). Empty unless something registered: one falsy check.
call_hooks: list[Callable[[str], None]] = []


def refusal(rt: Runtime) -> RejectedError | None:
    """The breaker's refusal of a call, found before the call is built (an outage's
    hot path: thousands of calls a second refused). None when the call must go
    through the engine: a closed or half-open breaker, or a rate limit first."""
    breaker = rt.breaker
    if breaker is None or rt.limiter is not None or breaker.would_admit():
        return None
    try:
        permit = breaker.acquire()
    except RejectedError as exc:
        return exc
    breaker.release(permit)  # admitted after all: the engine takes its own permit
    return None


def deadline_of(rt: Runtime, call: Call) -> float | None:
    """The call's deadline on the runtime's clock: Timeouts.total and the ambient deadline."""
    total = rt.policy.timeouts.total
    ambient = _ambient.get()
    if ambient is not None:
        left = ambient[1] - ambient[0].now()
        if total is None or left < total:
            total = left
            call.ambient_bound = True
    return None if total is None else call.start + total


async def run_call(fe: FrontEnd, call: Call) -> Any:
    """Run *call* through every layer; returns what ``fe.answer``/``fe.fail`` give."""
    rt = fe.rt
    if call_hooks:  # seawall.db.watch's check: one list test when unused
        for hook in call_hooks:
            hook(rt.name)
    clock = rt.clock
    deadline_at = call.deadline_at = deadline_of(rt, call)
    if deadline_at is not None:
        call.deadline_remaining = deadline_at - call.start
    # The frame is published before the rate limit: a shared limiter marks
    # on it a decision taken without Redis (the report's ``shared``).
    frames = current_frame()
    call.frame = frame = Frame(frames.get())
    token = frames.set(frame)
    try:
        if rt.limiter is not None:
            try:
                await rt.limiter.acquire(None if deadline_at is None else deadline_at - clock.now())
            except RejectedError as exc:
                return await fe.fail(call, exc, None, None)
        return await _loop(fe, call, rt, deadline_at)
    finally:
        frames.reset(token)


async def _loop(fe: FrontEnd, call: Call, rt: Runtime, deadline_at: float | None) -> Any:
    last: Any = None
    last_error: Exception | None = None
    policy = rt.policy
    retry_cfg = policy.retry
    hedge = policy.hedge if policy.hedge is not None and fe.hedgeable(call) else None
    if hedge is not None:
        call.roles = []
    frame = call.frame
    while True:
        admitted = await admit(fe, call, rt, deadline_at)
        if isinstance(admitted, SeawallError):
            if last_error is not None and admitted.__cause__ is None:
                admitted.__cause__ = last_error
            return await fe.fail(call, admitted, admitted.reason, last)
        if last is not None:
            await fe.discard(last)
            last = None
        if hedge is None:
            result, error, decision = await run_attempt(fe, call, rt, admitted, deadline_at)
        else:
            from ._hedge import hedged_round

            result, error, decision = await hedged_round(fe, call, rt, admitted, deadline_at, hedge)
        act = decision.act
        if isinstance(error, DeadlineExceededError) and error.__cause__ is None:
            error.__cause__ = last_error  # what the call was retrying when time ran out
        if act is Act.ANSWER:
            return await fe.answer(call, result, None)
        if error is not None and frame is not None and frame.unsafe:
            # An inner call sent what it may not resend: no retry from here.
            return await fe.fail(call, error, Stop.NOT_IDEMPOTENT, None)
        wait: float | Stop = 0.0
        if act is Act.RETRY:
            wait = _next_wait(call, rt, retry_cfg, decision, deadline_at)
        if act is Act.STOP or isinstance(wait, Stop):
            why = decision.reason if act is Act.STOP else str(wait)
            if error is None:
                return await fe.answer(call, result, why)
            return await fe.fail(call, error, why, None)
        reason = str(decision.reason)
        call.retries.append(reason)
        if call.tel is not None:
            call.tel.retry(reason, call.attempts, wait)
        last_error = error
        if result is not None:
            last = await fe.retain(result)
        await backoff_sleep(rt.clock, wait)


def _next_wait(
    call: Call, rt: Runtime, retry_cfg: Any, decision: Decision, deadline_at: float | None
) -> float | Stop:
    """The wait before the next attempt, or why there is none."""
    if decision.free and not call.free_resends:
        call.free_resends = 1
        return 0.0
    if retry_cfg is None or call.attempts - call.free_resends >= retry_cfg.attempts:
        return Stop.ATTEMPTS
    delay = decision.delay
    if delay is None:
        delay = backoff_delay(retry_cfg.backoff, call.attempts)
    elif delay > retry_cfg.max_retry_after:
        return Stop.RETRY_AFTER_TOO_LONG
    if deadline_at is not None and rt.clock.now() + delay >= deadline_at:
        return Stop.DEADLINE if decision.delay is None else Stop.RETRY_AFTER_TOO_LONG
    budget = rt.budget
    if budget is not None and not budget.try_spend():
        return Stop.BUDGET_EXHAUSTED
    return delay


async def admit(
    fe: FrontEnd, call: Call, rt: Runtime, deadline_at: float | None, *, hedge: bool = False
) -> Attempt | SeawallError:
    """Admit the next attempt: time left, a route whose breaker admits it, a bulkhead slot.

    A hedge never waits: without a free slot, or refused by every breaker, or by
    the retry budget, it is refused (``BulkheadFullError``/``CircuitOpenError``).
    """
    clock = rt.clock
    now = clock.now()
    if deadline_at is not None and deadline_at - now <= 0:
        return DeadlineExceededError(
            f"deadline of {rt.name!r} ran out before attempt {call.attempts + 1}",
            dependency=rt.name,
        )
    routes = fe.routes(call)
    n = len(routes)
    rejection: SeawallError | None = None
    permit = -1
    route = routes[0]
    for i in range(n):
        route = routes[(call.next_route + i) % n]
        breaker = route.breaker
        rejection = None
        if breaker is None:
            break
        try:
            permit = breaker.acquire()
        except RejectedError as exc:
            rejection = exc
            continue
        if call.breaker_before is None:
            call.breaker_before = breaker.state.value
        break
    if rejection is not None:
        return rejection
    if n > 1:
        call.next_route = (call.next_route + i + 1) % n
    if route.origin is not None:
        call.endpoint = route.origin
    bulkhead = rt.bulkhead
    slot: object | None = None
    if bulkhead is not None:
        slot = bulkhead.try_acquire()
        if slot is None:
            try:
                if hedge:
                    raise bulkhead.rejection()
                slot = await queue_for_slot(call, rt, deadline_at)
                now = clock.now()  # after the wait
            except BaseException as exc:
                _neutral(route.breaker, permit)
                if isinstance(exc, SeawallError):
                    return exc
                raise
    budget = rt.budget
    if hedge and budget is not None and not budget.try_spend():
        # Hedges spend the retry budget: a slow dependency cannot double our load.
        if bulkhead is not None and slot is not None:
            bulkhead.release(slot)
        _neutral(route.breaker, permit)
        return BulkheadFullError(f"retry budget of {rt.name!r} refused a hedge", dependency=rt.name)
    if call.attempts == 0 and budget is not None:
        # The budget counts calls that reached the dependency: one refused
        # outright earns no retries.
        budget.record_call()
    call.attempts += 1
    attempt = Attempt(route, permit, slot, call.attempts)
    attempt.t0 = now
    if call.roles is not None:
        attempt.hedge = hedge
        call.roles.append("hedge" if hedge else "first" if call.attempts == 1 else "retry")
    return attempt


async def queue_for_slot(call: Call, rt: Runtime, deadline_at: float | None) -> object:
    """Wait for a bulkhead slot: at most ``max_wait``, never past the deadline."""
    bulkhead = rt.bulkhead
    assert bulkhead is not None
    max_wait = bulkhead.config.max_wait
    if max_wait <= 0:
        raise bulkhead.rejection()
    clock = rt.clock
    start = clock.now()
    left = None if deadline_at is None else deadline_at - start
    if left is None or left > max_wait:
        slot: object | None = await bulkhead.acquire()  # BulkheadFullError after max_wait
    else:
        slot = await bulkhead.acquire_within(left)  # None: the deadline ran out first
    if slot is None or (deadline_at is not None and deadline_at - clock.now() <= 0):
        if slot is not None:
            bulkhead.release(slot)
        raise DeadlineExceededError(
            f"deadline of {rt.name!r} ran out waiting for a bulkhead slot",
            dependency=rt.name,
        )
    call.bulkhead_wait += clock.now() - start
    return slot


async def run_attempt(
    fe: FrontEnd, call: Call, rt: Runtime, attempt: Attempt, deadline_at: float | None
) -> tuple[Any, Exception | None, Decision]:
    """One attempt under its timeout; the breaker and the bulkhead settled, whatever happens."""
    clock = rt.clock
    limit = rt.policy.timeouts.attempt
    by_deadline = False
    t0 = attempt.t0  # when it was admitted: nothing waited since
    if deadline_at is not None:
        left = deadline_at - t0
        if limit is None or left < limit:
            limit, by_deadline = left, True
    breaker = attempt.route.breaker
    permit = attempt.permit
    slot = attempt.slot
    result: Any = None
    error: Exception | None = None
    try:
        if limit is None:
            result = await fe.send(call, attempt, None)
        else:
            with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
                result = await fe.send(call, attempt, limit)
            if scope.cancelled_caught:
                result = None
                error = fe.cut(call, attempt, by_deadline)
                if by_deadline and call.ambient_bound and limit < FAIR_CHANCE:
                    setattr(error, NEUTRAL_ATTR, True)
    except Exception as exc:
        error = exc
    except BaseException:
        # Cancelled by the caller (or a hedge that lost): neutral to the
        # breaker; the slot and the permit go back.
        fe.abandon(call, attempt)
        if slot is not None and rt.bulkhead is not None:
            rt.bulkhead.release(slot)
        _neutral(breaker, permit)
        raise
    duration = clock.now() - t0
    verdict: bool | None
    if error is None:
        decision, verdict = fe.judge_result(call, attempt, result)
    else:
        decision = fe.judge_error(call, attempt, error)
        verdict = _error_verdict(rt, error)
    if verdict is None:
        _neutral(breaker, permit)
    elif breaker is not None and permit >= 0:
        breaker.record(permit, duration, verdict)
    latency = rt.latency
    if latency is not None and error is None:
        latency.observe(duration)
    if slot is not None:
        bulkhead = rt.bulkhead
        assert bulkhead is not None
        # What an adaptive limit learns from: each attempt's latency, and
        # whether it ran out of time.
        bulkhead.observe(duration, error is not None and is_timeout(error))
        if not (decision.act is Act.ANSWER and fe.keep_slot(result, (bulkhead, slot))):
            bulkhead.release(slot)
    return result, error, decision


def _neutral(breaker: Breaker | None, permit: int) -> None:
    """Give a permit back without an outcome (a cancellation, a refusal, an ignored error)."""
    if breaker is not None and permit >= 0:
        breaker.release(permit)


def _error_verdict(rt: Runtime, exc: Exception) -> bool | None:
    """How the breaker counts an error: failed (True), success (False) or neutral (None)."""
    if getattr(exc, NEUTRAL_ATTR, False) or rt.ignore_on(exc):
        return None
    # As in Resilience4j, an error record_on does not match counts as a success.
    return rt.record_on(exc)
