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

import enum
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ._breaker import Breaker
from ._deadline import _current as _ambient
from ._exceptions import DeadlineExceededError, RejectedError, SeawallError
from ._retry import backoff_delay, backoff_sleep
from ._runtime import Runtime
from ._timeout import attempt_scope

__all__ = [
    "ANSWER",
    "Act",
    "Call",
    "Decision",
    "Frame",
    "FrontEnd",
    "Route",
    "Stop",
    "deadline_of",
    "mark_unsafe",
    "resend",
    "queue_for_slot",
    "retry",
    "run_call",
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

    __slots__ = ("parent", "unsafe")

    def __init__(self, parent: Frame | None) -> None:
        self.parent = parent
        #: An inner call sent a request it may not replay and got no answer.
        self.unsafe = False


_frame: ContextVar[Frame | None] = ContextVar("seawall_frame", default=None)


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
        "start",
        "status_code",
        "tel",
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
        #: The ambient (inbound) deadline, not Timeouts.total, bounds the call.
        self.ambient_bound = False

    def stopped(self, reason: str | None) -> None:
        self.retry_stopped = None if reason is None or reason in _UNREPORTED else reason


class FrontEnd(Protocol):
    """What a front end supplies to the engine (see ``_guard`` and ``_http``).

    The engine decides; the front end does the I/O of an attempt and judges
    what came back. ``answer`` and ``fail`` end the call: they return the
    call's value (a response, a fallback) or raise.
    """

    @property
    def rt(self) -> Runtime: ...

    def routes(self, call: Any) -> Sequence[Route]: ...

    async def send(self, call: Any, route: Route, limit: float | None) -> Any: ...

    def cut(self, call: Any, by_deadline: bool, limit: float) -> Exception: ...

    def judge_result(self, call: Any, result: Any, route: Route) -> tuple[Decision, bool]: ...

    def judge_error(self, call: Any, exc: Exception) -> Decision: ...

    def keep_slot(self, result: Any, held: Any) -> bool: ...

    async def retain(self, result: Any) -> Any: ...

    def discard(self, result: Any) -> None: ...

    async def answer(self, call: Any, result: Any, stopped: str | None) -> Any: ...

    async def fail(self, call: Any, error: Exception, stopped: str | None, last: Any) -> Any: ...


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
    clock = rt.clock
    deadline_at = call.deadline_at = deadline_of(rt, call)
    if deadline_at is not None:
        call.deadline_remaining = deadline_at - call.start
    if rt.limiter is not None:
        try:
            await rt.limiter.acquire(None if deadline_at is None else deadline_at - clock.now())
        except RejectedError as exc:
            return await fe.fail(call, exc, None, None)
    call.frame = frame = Frame(_frame.get())
    token = _frame.set(frame)
    try:
        return await _loop(fe, call, rt, deadline_at)
    finally:
        _frame.reset(token)


async def _loop(fe: FrontEnd, call: Call, rt: Runtime, deadline_at: float | None) -> Any:
    last: Any = None
    last_error: Exception | None = None
    retry_cfg = rt.policy.retry
    frame = call.frame
    while True:
        admitted = await _admit(fe, call, rt, deadline_at)
        if isinstance(admitted, SeawallError):
            if last_error is not None and admitted.__cause__ is None:
                admitted.__cause__ = last_error
            return await fe.fail(call, admitted, admitted.reason, last)
        if last is not None:
            fe.discard(last)
            last = None
        result, error, decision = await _attempt(fe, call, rt, *admitted, deadline_at)
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
        reason: str = decision.reason  # type: ignore[assignment]
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


async def _admit(
    fe: FrontEnd, call: Call, rt: Runtime, deadline_at: float | None
) -> tuple[Route, int, object | None] | SeawallError:
    """Admit the next attempt: time left, a route whose breaker admits it, a bulkhead slot."""
    clock = rt.clock
    if deadline_at is not None and deadline_at - clock.now() <= 0:
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
            call.breaker_before = breaker._state.value
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
                slot = await queue_for_slot(call, rt, deadline_at)
            except BaseException as exc:
                if permit >= 0:
                    route.breaker.release(permit)  # type: ignore[union-attr]
                if isinstance(exc, SeawallError):
                    return exc
                raise
    if call.attempts == 0 and rt.budget is not None:
        # The budget counts calls that reached the dependency: one refused
        # outright earns no retries.
        rt.budget.record_call()
    call.attempts += 1
    return route, permit, slot


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


async def _attempt(
    fe: FrontEnd,
    call: Call,
    rt: Runtime,
    route: Route,
    permit: int,
    slot: object | None,
    deadline_at: float | None,
) -> tuple[Any, Exception | None, Decision]:
    """One attempt under its timeout; the breaker and the bulkhead settled, whatever happens."""
    clock = rt.clock
    limit = rt.policy.timeouts.attempt
    by_deadline = False
    if deadline_at is not None:
        left = deadline_at - clock.now()
        if limit is None or left < limit:
            limit, by_deadline = left, True
    breaker = route.breaker
    t0 = clock.now()
    result: Any = None
    error: Exception | None = None
    try:
        if limit is None:
            result = await fe.send(call, route, None)
        else:
            with attempt_scope(limit) as scope:
                result = await fe.send(call, route, limit)
            if scope.cancelled_caught:
                result = None
                error = fe.cut(call, by_deadline, limit)
                if by_deadline and call.ambient_bound and limit < FAIR_CHANCE:
                    setattr(error, NEUTRAL_ATTR, True)
    except Exception as exc:
        error = exc
    except BaseException:
        # Cancelled by the caller: neutral to the breaker; slot and permit go back.
        if slot is not None:
            rt.bulkhead.release(slot)  # type: ignore[union-attr]
        if permit >= 0:
            breaker.release(permit)  # type: ignore[union-attr]
        raise
    duration = clock.now() - t0
    verdict: bool | None
    if error is None:
        decision, verdict = fe.judge_result(call, result, route)
    else:
        decision = fe.judge_error(call, error)
        verdict = _error_verdict(rt, error)
    if permit >= 0:
        if verdict is None:
            breaker.release(permit)  # type: ignore[union-attr]
        else:
            breaker.record(permit, duration, verdict)  # type: ignore[union-attr]
    if slot is not None:
        bulkhead = rt.bulkhead
        assert bulkhead is not None
        # What an adaptive limit learns from: each attempt's latency, and
        # whether it ran out of time.
        bulkhead.observe(duration, error is not None and is_timeout(error))
        if not (decision.act is Act.ANSWER and fe.keep_slot(result, (bulkhead, slot))):
            bulkhead.release(slot)
    return result, error, decision


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


def _error_verdict(rt: Runtime, exc: Exception) -> bool | None:
    """How the breaker counts an error: failed (True), success (False) or neutral (None)."""
    if getattr(exc, NEUTRAL_ATTR, False) or rt.ignore_on(exc):
        return None
    # As in Resilience4j, an error record_on does not match counts as a success.
    return rt.record_on(exc)
