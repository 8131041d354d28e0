"""``seawall.guard``: shared state by name, the three call forms, the layer order, errors.

Time that matters is a ManualClock. Attempt timeouts and cut attempts run on
anyio's own clock; the few tests of a cut use limits of about 10 ms.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import seawall
from seawall import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CallReport,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Guard,
    Policy,
    RateLimit,
    RateLimitedError,
    Registry,
    Retry,
    SeawallError,
    Timeouts,
)
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio

NO_WAIT = Backoff(initial=0.0, maximum=0.0)
NO_TIMEOUTS = Timeouts(attempt=None, total=None)
CUT = 0.01  # seconds of real time for the tests of a cut attempt


def make_policy(**parts: Any) -> Policy:
    """A policy with nothing on but what the test turns on."""
    base: dict[str, Any] = {"timeouts": NO_TIMEOUTS, "retry": None, "breaker": None}
    base.update(parts)
    return Policy(**base)


def retry(attempts: int = 3, backoff: Backoff = NO_WAIT) -> Retry:
    return Retry(attempts=attempts, backoff=backoff, budget=None)


async def ok(value: object = "ok") -> object:
    await anyio.lowlevel.checkpoint()
    return value


class Failing:
    """Raise ``error_type`` on the first ``failures`` calls, then return "ok"."""

    def __init__(self, failures: int, error_type: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error_type = error_type
        self.calls = 0
        self.raised: list[Exception] = []

    async def __call__(self) -> str:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.calls <= self.failures:
            error = self.error_type(f"call {self.calls}")
            self.raised.append(error)
            raise error
        return "ok"


class GatedClock(ManualClock):
    """A ManualClock whose sleep() parks until the test advances time past its end."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.sleepers: list[tuple[float, anyio.Event]] = []

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        for wake, event in self.sleepers:
            if self.now() >= wake:
                event.set()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        event = anyio.Event()
        entry = (self.now() + seconds, event)
        self.sleepers.append(entry)
        try:
            if seconds > 0:
                await event.wait()
            else:
                await anyio.lowlevel.checkpoint()
        finally:
            self.sleepers.remove(entry)


async def wait_until(condition: Any, *, turns: int = 1000) -> None:
    """Let other tasks run until *condition()* holds (a bounded number of turns)."""
    for _ in range(turns):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never came true")


# -- guard(): one state per name ------------------------------------------------------


async def test_same_name_shares_state() -> None:
    policy = make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=2))
    first = seawall.guard("db", policy)
    second = seawall.guard(
        "db", make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=2))
    )
    assert first is not second
    assert first.breaker is not None
    assert first.breaker is second.breaker
    assert first.bulkhead is second.bulkhead
    # state changed through one is seen through the other
    first.breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await second.call(ok)
    # no policy: the name's own
    third = seawall.guard("db")
    assert third.breaker is first.breaker
    assert third.policy == policy
    assert third.dependency == "db"
    # another name has its own state
    other = seawall.guard("cache", policy)
    assert other.breaker is not first.breaker
    assert await other.call(ok) == "ok"


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(make_policy(retry=retry(attempts=2)), id="retry"),
        pytest.param(make_policy(breaker=CircuitBreaker(minimum_calls=5)), id="breaker"),
        pytest.param(make_policy(timeouts=Timeouts(total=5.0)), id="timeouts"),
        pytest.param(make_policy(bulkhead=Bulkhead(max_concurrent=3)), id="bulkhead"),
        pytest.param(Policy(), id="default"),
    ],
)
async def test_different_policy_for_a_name_is_refused(other: Policy) -> None:
    policy = make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=2))
    seawall.guard("db", policy)
    with pytest.raises(ValueError, match="different policy"):
        seawall.guard("db", other)
    # refused at the guard() call, and nothing changed
    assert seawall.guard("db").policy == policy


async def test_another_clock_for_a_name_is_refused() -> None:
    clock = ManualClock()
    seawall.guard("db", make_policy(), clock=clock)
    assert seawall.guard("db", make_policy(), clock=clock).dependency == "db"
    assert seawall.guard("db", make_policy()).dependency == "db"  # no clock: the name's own
    with pytest.raises(ValueError, match="another clock"):
        seawall.guard("db", make_policy(), clock=ManualClock())
    with pytest.raises(ValueError, match="another clock"):
        seawall.guard("db", make_policy(), clock=seawall.MonotonicClock())


@pytest.mark.parametrize(
    ("name", "policy", "error"),
    [
        pytest.param("", make_policy(), ValueError, id="empty-name"),
        pytest.param(None, make_policy(), ValueError, id="no-name"),
        pytest.param("db", None, LookupError, id="unknown-without-policy"),
        pytest.param("db", {"retry": None}, TypeError, id="not-a-policy"),
    ],
)
def test_guard_arguments_are_checked(name: Any, policy: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        seawall.guard(name, policy)


async def test_registry_keeps_its_own_state() -> None:
    registry = Registry(clock=ManualClock())
    policy = make_policy(breaker=CircuitBreaker())
    mine = seawall.guard("db", policy, registry=registry)
    default = seawall.guard("db", policy)
    assert mine.breaker is not default.breaker
    assert mine.breaker is registry.breaker("db")
    assert seawall.guard("db", registry=registry).breaker is mine.breaker
    assert registry.guard("db").breaker is mine.breaker
    # the registry's clock is the default clock of its names
    with pytest.raises(ValueError, match="another clock"):
        seawall.guard("db", policy, registry=registry, clock=ManualClock())


def test_handles_are_none_when_the_policy_has_no_such_part() -> None:
    g = seawall.guard("db", make_policy())
    assert g.breaker is None
    assert g.bulkhead is None
    assert repr(g) == "<Guard 'db'>"


# -- the three call forms ---------------------------------------------------------------


async def test_call_passes_arguments_and_returns_the_result() -> None:
    g = seawall.guard("db", make_policy(breaker=CircuitBreaker()))

    async def add(a: int, b: int, *, scale: int = 1) -> int:
        await anyio.lowlevel.checkpoint()
        return (a + b) * scale

    assert await g.call(add, 1, 2, scale=10) == 30
    assert g.breaker is not None
    stats = g.breaker.statistics()
    assert (stats.calls, stats.failures) == (1, 0)


async def test_decorator_form() -> None:
    clock = ManualClock()
    policy = make_policy(retry=retry(attempts=3), breaker=CircuitBreaker())
    calls: list[tuple[int, str]] = []

    @seawall.guard("db", policy, clock=clock)
    async def fetch(key: int, *, table: str) -> str:
        """Fetch a row."""
        calls.append((key, table))
        if len(calls) == 1:
            raise ConnectionError("reset")
        return f"{table}:{key}"

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a row."
    assert await fetch(7, table="users") == "users:7"
    assert calls == [(7, "users"), (7, "users")]  # retried: every layer applies
    breaker = seawall.guard("db").breaker
    assert breaker is not None
    assert (breaker.statistics().calls, breaker.statistics().failures) == (2, 1)


async def test_async_with_applies_breaker_and_bulkhead() -> None:
    g = seawall.guard(
        "db", make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=2))
    )
    assert g.bulkhead is not None
    assert g.breaker is not None
    async with g as entered:
        assert entered is g
        assert g.bulkhead.statistics().in_use == 1
        async with g:  # nested entries each hold a slot
            assert g.bulkhead.statistics().in_use == 2
            with pytest.raises(BulkheadFullError):
                async with g:
                    pytest.fail("a third entry must not get in")  # pragma: no cover
        assert g.bulkhead.statistics().in_use == 1
    assert g.bulkhead.statistics().in_use == 0
    stats = g.breaker.statistics()
    assert (stats.calls, stats.failures) == (2, 0)


@pytest.mark.parametrize(
    "timeouts",
    [
        pytest.param(Timeouts(), id="default-timeouts"),
        pytest.param(Timeouts(attempt=5.0, total=None), id="attempt-only"),
        pytest.param(Timeouts(attempt=None, total=5.0), id="total-only"),
        pytest.param(Timeouts(attempt=5.0, total=1.0), id="total-shorter"),
    ],
)
async def test_async_with_under_timeouts_succeeds(timeouts: Timeouts) -> None:
    """A block that finishes in time is a success, on every backend (trio's
    CancelScope.__exit__ returns True when nothing went wrong: that is no cut)."""
    g = seawall.guard(
        "db",
        make_policy(timeouts=timeouts, breaker=CircuitBreaker(), bulkhead=Bulkhead()),
        clock=ManualClock(),
    )
    ran = 0
    for _ in range(3):
        async with g:
            await anyio.lowlevel.checkpoint()
            ran += 1
    assert ran == 3
    assert g.breaker is not None
    assert g.bulkhead is not None
    stats = g.breaker.statistics()
    assert (stats.calls, stats.failures) == (3, 0)
    assert g.bulkhead.statistics().in_use == 0


async def test_async_with_does_not_retry_and_reports_the_error() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(retry=retry(attempts=5), breaker=CircuitBreaker(), bulkhead=Bulkhead()),
        clock=clock,
    )
    runs = 0
    error = ConnectionError("reset")

    async def block() -> None:
        nonlocal runs
        async with g:
            runs += 1
            raise error

    with pytest.raises(ConnectionError) as info:
        await block()
    assert info.value is error
    assert runs == 1
    assert clock.slept == []
    report = seawall.report_of(error)
    assert report is not None
    assert (report.dependency, report.outcome, report.attempts) == ("db", "connect_error", 1)
    assert g.breaker is not None
    assert g.bulkhead is not None
    assert (g.breaker.statistics().calls, g.breaker.statistics().failures) == (1, 1)
    assert g.bulkhead.statistics().in_use == 0


async def test_async_with_attempt_timeout_raises_timeout_error() -> None:
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=CUT, total=None),
            breaker=CircuitBreaker(),
            bulkhead=Bulkhead(max_concurrent=1),
        ),
    )
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError) as info:
            async with g:
                await anyio.sleep_forever()
    assert type(info.value) is TimeoutError  # the built-in, not DeadlineExceededError
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.outcome == "timeout"
    assert g.bulkhead is not None
    assert g.breaker is not None
    assert g.bulkhead.statistics().in_use == 0
    assert g.breaker.statistics().failures == 1


@pytest.mark.parametrize(
    "timeouts",
    [
        pytest.param(Timeouts(attempt=None, total=CUT), id="total-only"),
        pytest.param(Timeouts(attempt=10.0, total=CUT), id="total-shorter-than-attempt"),
    ],
)
async def test_async_with_total_deadline_raises_deadline_exceeded(timeouts: Timeouts) -> None:
    g = seawall.guard("db", make_policy(timeouts=timeouts, bulkhead=Bulkhead(max_concurrent=1)))
    with anyio.fail_after(5):
        with pytest.raises(DeadlineExceededError) as info:
            async with g:
                await anyio.sleep_forever()
    assert isinstance(info.value, TimeoutError)
    assert info.value.dependency == "db"
    assert info.value.reason == "deadline_exceeded"
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"
    assert g.bulkhead is not None
    assert g.bulkhead.statistics().in_use == 0


async def test_async_with_cancelled_body_is_neutral() -> None:
    g = seawall.guard(
        "db",
        make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=1)),
    )
    with anyio.CancelScope() as scope:
        async with g:
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert g.bulkhead is not None
    assert g.breaker is not None
    assert g.bulkhead.statistics().in_use == 0
    assert g.breaker.statistics().calls == 0


async def test_async_with_from_many_tasks_at_once() -> None:
    g = seawall.guard("db", make_policy(bulkhead=Bulkhead(max_concurrent=3, max_wait=5.0)))
    assert g.bulkhead is not None
    peak = 0
    done = 0

    async def worker() -> None:
        nonlocal peak, done
        async with g:
            peak = max(peak, g.bulkhead.statistics().in_use)  # type: ignore[union-attr]
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        done += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
    assert done == 20
    assert peak == 3
    assert g.bulkhead.statistics() == seawall.BulkheadStatistics(in_use=0, limit=3, waiting=0)


# -- timeouts ---------------------------------------------------------------------------


async def test_cut_attempt_raises_timeout_error_and_is_retried() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(timeouts=Timeouts(attempt=CUT, total=None), retry=retry(attempts=3)),
        clock=clock,
    )
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()
        return "ok"

    with anyio.fail_after(5):
        assert await g.call(slow_then_fast) == "ok"
    assert calls == 2
    assert len(clock.slept) == 1


async def test_every_attempt_cut_ends_in_timeout_error() -> None:
    g = seawall.guard(
        "db",
        make_policy(timeouts=Timeouts(attempt=CUT, total=None), retry=retry(attempts=2)),
        clock=ManualClock(),
    )
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError) as info:
            await g.call(anyio.sleep_forever)
    assert type(info.value) is TimeoutError
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "retry_exhausted",
        2,
        ("timeout",),
    )


async def test_total_deadline_cut_is_not_retried_and_chains_the_last_error() -> None:
    """Attempt 1 fails fast; attempt 2 runs into the total deadline."""
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=10.0, total=2 * CUT),
            retry=Retry(attempts=5, backoff=NO_WAIT, budget=None, retry_on=lambda e: True),
            breaker=CircuitBreaker(),
        ),
        clock=clock,
    )
    first = ConnectionError("refused")
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise first
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        with pytest.raises(DeadlineExceededError) as info:
            await g.call(fn)
    assert calls == 2  # a DeadlineExceededError is never retried
    assert info.value.__cause__ is first
    report = info.value.report
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "deadline_exceeded",
        2,
        ("connection_error",),
    )


class OversleepingClock(ManualClock):
    """A ManualClock whose sleep() takes ten times as long as asked (a loaded machine)."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds * 10)


async def test_deadline_passed_during_backoff_raises_before_the_next_attempt() -> None:
    clock = OversleepingClock()
    backoff = Backoff(initial=0.5, maximum=0.5, jitter=False)
    g = seawall.guard(
        "db",
        make_policy(timeouts=Timeouts(attempt=None, total=1.0), retry=retry(5, backoff)),
        clock=clock,
    )
    fn = Failing(failures=5)
    with pytest.raises(DeadlineExceededError) as info:
        await g.call(fn)
    assert fn.calls == 1
    assert info.value.__cause__ is fn.raised[0]
    assert info.value.report is not None
    assert info.value.report.attempts == 1
    assert info.value.report.retries == ("connection_error",)


# -- the layer order --------------------------------------------------------------------


async def test_rate_limit_is_outermost_and_spends_one_token_per_call() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(
            rate_limit=RateLimit(rate=1, per=10.0),
            retry=retry(attempts=3),
            breaker=CircuitBreaker(),
            bulkhead=Bulkhead(max_concurrent=1),
        ),
        clock=clock,
    )
    fn = Failing(failures=2)
    assert await g.call(fn) == "ok"  # three attempts, one token
    assert fn.calls == 3
    with pytest.raises(RateLimitedError) as info:
        await g.call(fn)
    assert fn.calls == 3
    assert info.value.retry_after == pytest.approx(10.0)
    assert info.value.report is not None
    assert (info.value.report.outcome, info.value.report.attempts) == ("rate_limited", 0)
    # the rejection never reached breaker or bulkhead
    assert g.breaker is not None
    assert g.breaker.statistics().calls == 3
    # the rate limit comes before the breaker
    g.breaker.force_open()
    with pytest.raises(RateLimitedError):
        await g.call(fn)
    clock.advance(10.0)
    with pytest.raises(CircuitOpenError):
        await g.call(fn)


async def test_breaker_comes_before_the_bulkhead() -> None:
    g = seawall.guard(
        "db", make_policy(breaker=CircuitBreaker(), bulkhead=Bulkhead(max_concurrent=1))
    )
    assert g.breaker is not None
    assert g.bulkhead is not None
    async with g:  # holds the only slot
        with pytest.raises(BulkheadFullError):
            await g.call(ok)
        g.breaker.force_open()
        with pytest.raises(CircuitOpenError):
            await g.call(ok)
        assert g.bulkhead.statistics().waiting == 0


async def test_bulkhead_rejection_is_not_a_breaker_failure_and_returns_the_probe() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(minimum_calls=1, window_size=1, open_duration=5.0, half_open_calls=2)
    g = seawall.guard(
        "db",
        make_policy(breaker=breaker, bulkhead=Bulkhead(max_concurrent=1)),
        clock=clock,
    )
    assert g.breaker is not None
    assert g.bulkhead is not None
    with pytest.raises(ConnectionError):
        await g.call(Failing(1))
    clock.advance(5.0)
    assert g.breaker.state is seawall.BreakerState.HALF_OPEN
    async with g:  # one probe, holding the slot
        assert g.breaker.statistics().half_open_permits_in_use == 1
        with pytest.raises(BulkheadFullError):
            await g.call(ok)
        assert g.breaker.statistics().half_open_permits_in_use == 1
    # two probes passed: the rejected one neither counted nor kept its permit
    assert g.breaker.state is seawall.BreakerState.HALF_OPEN
    assert await g.call(ok) == "ok"
    assert g.breaker.state is seawall.BreakerState.CLOSED


async def test_breaker_sees_every_attempt() -> None:
    g = seawall.guard(
        "db", make_policy(retry=retry(attempts=3), breaker=CircuitBreaker()), clock=ManualClock()
    )
    with pytest.raises(ConnectionError):
        await g.call(Failing(3))
    assert g.breaker is not None
    stats = g.breaker.statistics()
    assert (stats.calls, stats.failures) == (3, 3)


async def test_cut_attempt_frees_its_slot_and_counts_as_a_failure() -> None:
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=CUT, total=None),
            breaker=CircuitBreaker(),
            bulkhead=Bulkhead(max_concurrent=1),
        ),
    )
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError):
            await g.call(anyio.sleep_forever)
    assert g.bulkhead is not None
    assert g.breaker is not None
    assert g.bulkhead.statistics().in_use == 0
    assert g.breaker.statistics().failures == 1


class InspectingClock(GatedClock):
    """Records, at each sleep, the guard's bulkhead slots and breaker probes in use."""

    def __init__(self) -> None:
        super().__init__()
        self.guard: Guard | None = None
        self.seen: list[tuple[int, int]] = []

    async def sleep(self, seconds: float) -> None:
        assert self.guard is not None
        assert self.guard.bulkhead is not None
        assert self.guard.breaker is not None
        self.seen.append(
            (
                self.guard.bulkhead.statistics().in_use,
                self.guard.breaker.statistics().half_open_permits_in_use,
            )
        )
        await super().sleep(seconds)


async def test_no_bulkhead_slot_is_held_while_sleeping_between_attempts() -> None:
    clock = InspectingClock()
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=False)
    g = clock.guard = seawall.guard(
        "db",
        make_policy(
            retry=retry(attempts=3, backoff=backoff),
            breaker=CircuitBreaker(
                minimum_calls=1, window_size=1, open_duration=1.0, half_open_calls=5
            ),
            bulkhead=Bulkhead(max_concurrent=1, max_wait=0.0),
        ),
        clock=clock,
    )
    assert g.bulkhead is not None
    assert g.breaker is not None
    with pytest.raises(ConnectionError):
        async with g:  # no retry here: one failure opens the breaker
            raise ConnectionError("refused")
    clock.advance(1.0)
    assert g.breaker.state is seawall.BreakerState.HALF_OPEN  # probes from here on
    in_attempt: list[int] = []

    async def fn() -> str:
        in_attempt.append(g.bulkhead.statistics().in_use)  # type: ignore[union-attr]
        if len(in_attempt) < 3:
            raise ConnectionError("reset")
        return "ok"

    result: list[object] = []
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            result.append(await g.call(fn))

        tg.start_soon(caller)
        for sleeps in (1, 2):
            await wait_until(lambda: len(clock.slept) == sleeps and bool(clock.sleepers))  # noqa: B023
            # while the caller sleeps, its slot is free for someone else
            assert g.bulkhead.statistics().in_use == 0
            assert await g.call(ok, "other") == "other"
            clock.advance(1.0)
    assert result == ["ok"]
    assert in_attempt == [1, 1, 1]  # the slot is held during each attempt
    assert clock.seen == [(0, 0), (0, 0)]  # and neither slot nor probe during a sleep


# -- errors and reports -----------------------------------------------------------------


async def test_rejection_errors_carry_dependency_reason_and_report() -> None:
    clock = ManualClock(start=50.0)
    breaker = CircuitBreaker(minimum_calls=1, window_size=1, open_duration=30.0)
    g = seawall.guard("payments", make_policy(breaker=breaker), clock=clock)
    with pytest.raises(ConnectionError):
        await g.call(Failing(1))
    clock.advance(12.0)
    with pytest.raises(SeawallError) as info:
        await g.call(ok)
    error = info.value
    assert isinstance(error, CircuitOpenError)
    assert error.dependency == "payments"
    assert error.reason == "circuit_open"
    assert error.retry_after == pytest.approx(18.0)
    assert isinstance(error.report, CallReport)
    assert seawall.report_of(error) is error.report
    assert error.report.outcome == "circuit_open"
    assert error.report.breaker_state == "open"
    # attempts counts attempts that ran; a refused one sent nothing
    assert error.report.attempts == 0


async def test_report_of_foreign_errors() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(timeouts=Timeouts(attempt=None, total=30.0), retry=retry(2)),
        clock=clock,
    )

    async def fn() -> None:
        clock.advance(0.25)
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        await g.call(fn)
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.dependency == "db"
    assert report.outcome == "error"
    assert report.attempts == 1
    assert report.elapsed == pytest.approx(0.25)
    assert report.timeouts == Timeouts(attempt=None, total=30.0)
    assert report.as_dict()["timeouts"]["total"] == 30.0
    # an error that never went through a guard has no report
    assert seawall.report_of(KeyError("missing")) is None
    assert seawall.report_of(object()) is None


# -- the bugs fixed in _guard.py --------------------------------------------------------


async def test_bulkhead_wait_is_bounded_by_the_deadline() -> None:
    """Waiting for a bulkhead slot is part of the call: the total deadline caps it."""
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=None, total=2 * CUT),
            bulkhead=Bulkhead(max_concurrent=1, max_wait=30.0),
            breaker=CircuitBreaker(),
        ),
    )
    assert g.bulkhead is not None
    assert g.breaker is not None
    holder = g.bulkhead.try_acquire()  # never lets go in time
    assert holder is not None
    with anyio.fail_after(5):
        with pytest.raises(DeadlineExceededError) as info:
            await g.call(ok)
    assert g.bulkhead.statistics() == seawall.BulkheadStatistics(in_use=1, limit=1, waiting=0)
    g.bulkhead.release(holder)
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"
    # the call never ran, and its breaker permit went back unrecorded
    assert g.breaker.statistics().calls == 0


async def test_no_attempt_starts_after_a_bulkhead_wait_outlived_the_deadline() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=None, total=5.0),
            bulkhead=Bulkhead(max_concurrent=1, max_wait=30.0),
        ),
        clock=clock,
    )
    assert g.bulkhead is not None
    ran: list[str] = []

    async def fn() -> str:
        ran.append("ran")
        return "ok"

    outcome: list[BaseException | object] = []

    async def caller() -> None:
        try:
            outcome.append(await g.call(fn))
        except Exception as exc:
            outcome.append(exc)

    holder = g.bulkhead.try_acquire()
    assert holder is not None
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until(lambda: g.bulkhead.statistics().waiting == 1)  # type: ignore[union-attr]
            clock.advance(6.0)  # the caller's deadline passes while it waits
            g.bulkhead.release(holder)
    assert ran == []
    assert len(outcome) == 1
    assert isinstance(outcome[0], DeadlineExceededError)
    assert g.bulkhead.statistics().in_use == 0


async def test_async_with_bulkhead_wait_is_bounded_by_the_deadline() -> None:
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=None, total=2 * CUT),
            bulkhead=Bulkhead(max_concurrent=1, max_wait=30.0),
        ),
    )
    assert g.bulkhead is not None
    holder = g.bulkhead.try_acquire()
    assert holder is not None
    with anyio.fail_after(5):
        with pytest.raises(DeadlineExceededError) as info:
            async with g:
                pytest.fail("must not enter")  # pragma: no cover
    assert g.bulkhead.statistics() == seawall.BulkheadStatistics(in_use=1, limit=1, waiting=0)
    g.bulkhead.release(holder)
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"


async def test_rate_limit_wait_does_not_shorten_the_ambient_deadline() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=False)
    g = seawall.guard(
        "db",
        make_policy(
            timeouts=Timeouts(attempt=None, total=None),
            rate_limit=RateLimit(rate=1, per=1.0, max_wait=5.0),
            retry=retry(attempts=2, backoff=backoff),
        ),
        clock=clock,
    )
    await g.call(ok)  # takes the only token
    left: list[float | None] = []

    async def fn() -> str:
        left.append(seawall.deadline_remaining())
        if len(left) == 1:
            clock.advance(2.5)
            raise ConnectionError("reset")
        return "ok"

    with seawall.deadline(5.0, clock=clock):
        # waits 1 s for a token; attempt 1 ends at 3.5 s; 3.5 + 1 s of backoff < 5 s
        assert await g.call(fn) == "ok"
    assert left == [pytest.approx(4.0), pytest.approx(0.5)]
    assert clock.slept == [pytest.approx(1.0), pytest.approx(1.0)]
