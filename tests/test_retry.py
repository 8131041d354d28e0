"""Retry through ``seawall.guard``: attempts, ``retry_on``, backoff, the retry budget.

Time is a ManualClock everywhere: a backoff wait advances it by the time asked
(and is recorded in ``clock.slept``), so no test waits for real.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest

import seawall
from seawall import (
    Backoff,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Policy,
    RateLimitedError,
    Retry,
    RetryBudget,
    SeawallError,
    Timeouts,
)
from seawall._retry import BudgetTracker, parse_retry_after
from seawall.testing import ManualClock, disable_waits

pytestmark = pytest.mark.anyio

NO_WAIT = Backoff(initial=0.0, maximum=0.0)


def make_policy(
    *,
    attempts: int = 3,
    backoff: Backoff = NO_WAIT,
    budget: RetryBudget | None = None,
    retry_on: object = (TimeoutError, ConnectionError),
    breaker: CircuitBreaker | None = None,
    total: float | None = None,
) -> Policy:
    return Policy(
        timeouts=Timeouts(attempt=None, total=total),
        retry=Retry(attempts=attempts, backoff=backoff, budget=budget, retry_on=retry_on),  # type: ignore[arg-type]
        breaker=breaker,
    )


class Flaky:
    """An async callable that raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception, advance: tuple[ManualClock, float] | None = None):
        self.errors = list(errors)
        self.calls = 0
        self.raised: list[Exception] = []
        self.advance = advance

    async def __call__(self) -> str:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.advance is not None:
            clock, seconds = self.advance
            clock.advance(seconds)
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return "ok"


# -- attempts ---------------------------------------------------------------------


async def test_attempts_counts_the_first_call() -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(attempts=3), clock=clock)
    fn = Flaky(ConnectionError("a"), ConnectionError("b"), ConnectionError("c"), ConnectionError())
    with pytest.raises(ConnectionError) as info:
        await g.call(fn)
    assert fn.calls == 3
    assert info.value is fn.raised[-1]  # the last error, not the first
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 3
    assert report.retries == ("connection_error", "connection_error")
    assert report.outcome == "retry_exhausted"
    assert report.retry_stopped is None
    assert report.dependency == "db"


async def test_success_after_retries_returns_the_result() -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(attempts=3), clock=clock)
    fn = Flaky(TimeoutError(), ConnectionError())
    assert await g.call(fn) == "ok"
    assert fn.calls == 3
    assert len(clock.slept) == 2


async def test_single_attempt_never_retries() -> None:
    g = seawall.guard("db", make_policy(attempts=1), clock=ManualClock())
    fn = Flaky(ConnectionError())
    with pytest.raises(ConnectionError) as info:
        await g.call(fn)
    assert fn.calls == 1
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.attempts, report.retries, report.outcome) == (1, (), "connect_error")


async def test_policy_without_retry_makes_one_attempt() -> None:
    policy = Policy(timeouts=Timeouts(attempt=None, total=None), retry=None, breaker=None)
    g = seawall.guard("db", policy, clock=ManualClock())
    fn = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        await g.call(fn)
    assert fn.calls == 1


# -- retry_on ---------------------------------------------------------------------


def _says_again(exc: Exception) -> bool:
    return "again" in str(exc)


@pytest.mark.parametrize(
    ("retry_on", "error", "calls"),
    [
        pytest.param((TimeoutError, ConnectionError), TimeoutError(), 3, id="default-timeout"),
        pytest.param(
            (TimeoutError, ConnectionError), ConnectionResetError(), 3, id="default-subclass"
        ),
        pytest.param((TimeoutError, ConnectionError), OSError(), 1, id="default-oserror-not"),
        pytest.param((TimeoutError, ConnectionError), ValueError(), 1, id="default-value-not"),
        pytest.param((ValueError,), ValueError(), 3, id="types-match"),
        pytest.param((ValueError,), KeyError(), 1, id="types-no-match"),
        pytest.param((ValueError,), TimeoutError(), 1, id="types-replace-default"),
        pytest.param((), ConnectionError(), 1, id="empty-tuple"),
        pytest.param(_says_again, RuntimeError("try again"), 3, id="predicate-true"),
        pytest.param(_says_again, RuntimeError("give up"), 1, id="predicate-false"),
    ],
)
async def test_retry_on(retry_on: object, error: Exception, calls: int) -> None:
    g = seawall.guard("db", make_policy(attempts=3, retry_on=retry_on), clock=ManualClock())
    fn = Flaky(error, error, error)
    with pytest.raises(type(error)):
        await g.call(fn)
    assert fn.calls == calls
    report = seawall.report_of(error)
    assert report is not None
    assert report.attempts == calls
    assert len(report.retries) == calls - 1


async def test_not_retryable_error_reports_plain_outcome() -> None:
    g = seawall.guard("db", make_policy(attempts=3), clock=ManualClock())
    error = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        await g.call(Flaky(error))
    report = seawall.report_of(error)
    assert report is not None
    assert report.outcome == "error"
    assert report.retries == ()
    assert report.retry_stopped is None


async def test_cancellation_is_never_retried() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(attempts=5, retry_on=lambda exc: True, breaker=CircuitBreaker()),
        clock=clock,
    )
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        scope.cancel()
        await anyio.sleep_forever()
        return "unreachable"  # pragma: no cover

    with anyio.CancelScope() as scope:
        await g.call(fn)
    assert scope.cancelled_caught
    assert calls == 1
    assert clock.slept == []
    # cancellation is neutral for the breaker
    assert g.breaker is not None
    assert g.breaker.statistics().calls == 0


@pytest.mark.parametrize(
    "make_error",
    [
        pytest.param(lambda: CircuitOpenError("open", dependency="other"), id="circuit-open"),
        pytest.param(lambda: BulkheadFullError("full", dependency="other"), id="bulkhead-full"),
        pytest.param(
            lambda: RateLimitedError("limited", dependency="other", retry_after=1.0),
            id="rate-limited",
        ),
        pytest.param(lambda: DeadlineExceededError("late", dependency="other"), id="deadline"),
    ],
)
async def test_seawall_errors_from_inside_are_never_retried(
    make_error: Callable[[], SeawallError],
) -> None:
    """A nested guard's rejection (or deadline) fails the outer call fast, even with a
    retry_on that matches everything."""
    clock = ManualClock()
    g = seawall.guard("db", make_policy(attempts=5, retry_on=lambda exc: True), clock=clock)
    error = make_error()
    fn = Flaky(error, error, error)
    with pytest.raises(type(error)) as info:
        await g.call(fn)
    assert info.value is error
    assert fn.calls == 1
    assert clock.slept == []


async def test_own_open_breaker_fails_fast_without_retry() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "db",
        make_policy(attempts=5, retry_on=lambda exc: True, breaker=CircuitBreaker()),
        clock=clock,
    )
    assert g.breaker is not None
    g.breaker.force_open()
    fn = Flaky()
    with pytest.raises(CircuitOpenError) as info:
        await g.call(fn)
    assert fn.calls == 0
    assert clock.slept == []
    assert info.value.report is not None
    assert info.value.report.outcome == "circuit_open"
    assert info.value.report.retries == ()


async def test_breaker_opening_between_attempts_ends_retrying() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(minimum_calls=1, window_size=1, open_duration=30.0)
    g = seawall.guard("db", make_policy(attempts=5, breaker=breaker), clock=clock)
    first = ConnectionError("refused")
    fn = Flaky(first, ConnectionError())
    with pytest.raises(CircuitOpenError) as info:
        await g.call(fn)
    assert fn.calls == 1
    assert info.value.__cause__ is first
    assert info.value.retry_after == pytest.approx(30.0)
    report = info.value.report
    assert report is not None
    assert report.retries == ("connection_error",)
    assert report.outcome == "circuit_open"
    assert report.breaker_state == "open"


# -- deadline ---------------------------------------------------------------------


async def test_retry_stops_when_the_next_backoff_would_cross_the_deadline() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=0.4, multiplier=2.0, maximum=10.0, jitter=False)
    g = seawall.guard("db", make_policy(attempts=10, backoff=backoff, total=1.0), clock=clock)
    fn = Flaky(*(ConnectionError(str(i)) for i in range(10)), advance=(clock, 0.1))
    with pytest.raises(ConnectionError) as info:
        await g.call(fn)
    # attempt 1 ends at 0.1, sleeps 0.4; attempt 2 ends at 0.6 and 0.6 + 0.8 > 1.0
    assert fn.calls == 2
    assert info.value is fn.raised[-1]
    assert clock.slept == [pytest.approx(0.4)]
    assert clock.now() == pytest.approx(0.6)  # no wait towards the deadline at all
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.retry_stopped == "deadline"
    assert report.attempts == 2
    assert report.retries == ("connection_error",)
    assert report.outcome == "connect_error"


async def test_deadline_stop_does_not_spend_budget() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0)  # one retry in 10 s
    backoff = Backoff(initial=5.0, maximum=5.0, jitter=False)
    g = seawall.guard("db", make_policy(attempts=2, backoff=backoff, budget=budget), clock=clock)

    async def stopped() -> str | None:
        try:
            await g.call(Flaky(ConnectionError()))
        except ConnectionError as exc:
            report = seawall.report_of(exc)
            assert report is not None
            return report.retry_stopped
        return "ok"

    with seawall.deadline(1.0, clock=clock):
        assert await stopped() == "deadline"
    assert clock.slept == []
    # the budget's one retry is still there, and then it is spent
    assert await stopped() == "ok"
    assert await stopped() == "budget_exhausted"


# -- retry budget -----------------------------------------------------------------


async def test_budget_cuts_a_retry_storm() -> None:
    clock = ManualClock()
    # retries <= 0.5 * calls + 0.1 * 10
    budget = RetryBudget(ratio=0.5, min_per_second=0.1, window=10.0)
    g = seawall.guard("db", make_policy(attempts=3, budget=budget), clock=clock)
    stopped: list[str | None] = []
    total_calls = 0
    for _ in range(40):
        fn = Flaky(*(ConnectionError() for _ in range(3)))
        with pytest.raises(ConnectionError) as info:
            await g.call(fn)
        total_calls += fn.calls
        report = seawall.report_of(info.value)
        assert report is not None
        stopped.append(report.retry_stopped)
    retries = total_calls - 40
    # without a budget this storm would be 80 retries
    assert retries == 21  # floor(0.5 * 40) + 1
    assert retries <= 0.5 * 40 + 1
    # every call wanted a second retry (or a first), and the budget said no
    assert stopped == ["budget_exhausted"] * 40
    tracker = g._rt.budget
    assert tracker is not None
    assert (tracker.calls, tracker.retries) == (40, 21)


async def test_budget_refills_as_the_window_passes() -> None:
    clock = ManualClock(start=100.25)
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10.0)  # two retries / 10 s
    g = seawall.guard("db", make_policy(attempts=2, budget=budget), clock=clock)

    async def outcome() -> str | None:
        try:
            await g.call(Flaky(ConnectionError()))
        except ConnectionError as exc:
            report = seawall.report_of(exc)
            assert report is not None
            return report.retry_stopped
        return "ok"

    assert [await outcome() for _ in range(3)] == ["ok", "ok", "budget_exhausted"]
    clock.advance(9.5)  # the retries spent at t=100.25 are still in the window
    assert await outcome() == "budget_exhausted"
    clock.advance(0.5)  # now they have left it
    assert await outcome() == "ok"
    assert await outcome() == "ok"
    assert await outcome() == "budget_exhausted"


async def test_budget_is_shared_by_every_guard_of_a_name() -> None:
    clock = ManualClock()
    policy = make_policy(attempts=2, budget=RetryBudget(ratio=0.0, min_per_second=0.1))
    first = seawall.guard("db", policy, clock=clock)
    second = seawall.guard("db", policy)
    assert await first.call(Flaky(ConnectionError())) == "ok"
    with pytest.raises(ConnectionError) as info:
        await second.call(Flaky(ConnectionError()))
    assert seawall.report_of(info.value).retry_stopped == "budget_exhausted"  # type: ignore[union-attr]


def test_budget_tracker_counts_and_forgets() -> None:
    clock = ManualClock()
    tracker = BudgetTracker(RetryBudget(ratio=1.0, min_per_second=0.0, window=1.0), clock=clock)
    assert not tracker.try_spend()  # no calls: no retries
    tracker.record_call()
    tracker.record_call()
    assert tracker.try_spend()
    assert tracker.try_spend()
    assert not tracker.try_spend()
    clock.advance(0.55)
    assert not tracker.try_spend()
    tracker.record_call()
    assert tracker.try_spend()
    clock.advance(0.5)  # the first two calls and their retries have aged out
    assert not tracker.try_spend()
    assert (tracker.calls, tracker.retries) == (1, 1)
    clock.advance(100.0)  # a long quiet spell empties every bucket
    assert not tracker.try_spend()
    assert (tracker.calls, tracker.retries) == (0, 0)


# -- backoff ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "retry", "expected"),
    [
        pytest.param(Backoff(jitter=False), 1, 0.1, id="default-first"),
        pytest.param(Backoff(jitter=False), 2, 0.2, id="default-second"),
        pytest.param(Backoff(jitter=False), 4, 0.8, id="default-fourth"),
        pytest.param(Backoff(jitter=False), 8, 10.0, id="default-capped"),
        pytest.param(Backoff(jitter=False), 64, 10.0, id="huge-retry"),
        pytest.param(Backoff(jitter=False), 10_000, 10.0, id="enormous-retry"),
        pytest.param(
            Backoff(initial=1.0, multiplier=3.0, maximum=5.0, jitter=False), 2, 3.0, id="x3"
        ),
        pytest.param(
            Backoff(initial=1.0, multiplier=3.0, maximum=5.0, jitter=False), 3, 5.0, id="x3-cap"
        ),
        pytest.param(Backoff(initial=0.5, multiplier=1.0, jitter=False), 30, 0.5, id="constant"),
        pytest.param(Backoff(initial=0.0, maximum=0.0, jitter=False), 3, 0.0, id="zero"),
    ],
)
def test_backoff_delay_without_jitter_is_deterministic(
    backoff: Backoff, retry: int, expected: float
) -> None:
    def never_called() -> float:
        raise AssertionError("jitter=False must not draw a random number")

    assert backoff.delay(retry, never_called) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("draw", "retry", "expected"),
    [
        pytest.param(0.0, 3, 0.0, id="zero"),
        pytest.param(0.5, 1, 0.05, id="half-first"),
        pytest.param(0.5, 3, 0.2, id="half-third"),
        pytest.param(0.25, 20, 2.5, id="quarter-of-cap"),
    ],
)
def test_backoff_full_jitter_scales_the_cap(draw: float, retry: int, expected: float) -> None:
    backoff = Backoff()
    assert backoff.jitter is True  # full jitter is the default
    assert backoff.delay(retry, lambda: draw) == pytest.approx(expected)


def test_backoff_jitter_stays_within_the_cap() -> None:
    rng = random.Random(1234)
    backoff = Backoff(initial=0.1, multiplier=2.0, maximum=1.0)
    for retry in range(1, 30):
        cap = min(1.0, 0.1 * 2.0 ** (retry - 1))
        delays = [backoff.delay(retry, rng.random) for _ in range(50)]
        assert all(0.0 <= d < cap for d in delays)
        assert len(set(delays)) > 1


async def test_guard_sleeps_the_backoff_between_attempts() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=0.1, multiplier=2.0, maximum=0.3, jitter=False)
    g = seawall.guard("db", make_policy(attempts=4, backoff=backoff), clock=clock)
    assert await g.call(Flaky(ConnectionError(), ConnectionError(), ConnectionError())) == "ok"
    assert clock.slept == [pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3)]
    assert clock.now() == pytest.approx(0.6)


async def test_guard_backoff_is_jittered_by_default() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=1.0, multiplier=1.0, maximum=1.0)
    g = seawall.guard("db", make_policy(attempts=9, backoff=backoff), clock=clock)
    assert await g.call(Flaky(*(ConnectionError() for _ in range(8)))) == "ok"
    assert len(clock.slept) == 8
    assert all(0.0 <= d < 1.0 for d in clock.slept)
    assert len(set(clock.slept)) > 1


async def test_disable_waits_makes_backoff_sleeps_no_ops() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=5.0, maximum=5.0, jitter=False)
    g = seawall.guard("db", make_policy(attempts=3, backoff=backoff), clock=clock)
    with disable_waits():
        fn = Flaky(ConnectionError(), ConnectionError(), ConnectionError())
        with pytest.raises(ConnectionError) as info:
            await g.call(fn)
        assert fn.calls == 3  # retries still run, count and report
        assert clock.slept == [0.0, 0.0]
        assert clock.now() == 0.0
        report = seawall.report_of(info.value)
        assert report is not None
        assert report.retries == ("connection_error", "connection_error")
    # waits are back after the block
    assert await g.call(Flaky(ConnectionError())) == "ok"
    assert clock.slept == [0.0, 0.0, 5.0]


async def test_disable_waits_nests() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=5.0, maximum=5.0, jitter=False)
    g = seawall.guard("db", make_policy(attempts=2, backoff=backoff), clock=clock)
    with disable_waits():
        with disable_waits():
            await g.call(Flaky(ConnectionError()))
        await g.call(Flaky(ConnectionError()))
    await g.call(Flaky(ConnectionError()))
    assert clock.slept == [0.0, 0.0, 5.0]


# -- Retry-After parsing ------------------------------------------------------------

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="missing"),
        pytest.param("", None, id="empty"),
        pytest.param("120", 120.0, id="seconds"),
        pytest.param(" 7 ", 7.0, id="padded"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("Tue, 14 Nov 2023 22:14:00 GMT", 40.0, id="http-date"),
        pytest.param("Tue, 14 Nov 2023 22:00:00 GMT", 0.0, id="date-in-past"),
        pytest.param("-5", None, id="negative"),
        pytest.param("1.5", None, id="fraction"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("Tue, 99 Nov 2023 22:14:00 GMT", None, id="bad-date"),
        pytest.param("\u00b2", None, id="superscript-digit"),
        pytest.param("\u0661\u0662", None, id="non-ascii-digits"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    result = parse_retry_after(value, now_wall=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("multiplier", "retry"),
    [
        pytest.param(1e6, 53, id="huge-multiplier"),
        pytest.param(2.0, 5000, id="many-retries"),
    ],
)
def test_backoff_never_overflows(multiplier: float, retry: int) -> None:
    backoff = seawall.Backoff(initial=0.1, maximum=7.0, multiplier=multiplier, jitter=False)
    assert backoff.delay(retry, lambda: 1.0) == 7.0
