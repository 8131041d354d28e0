"""``seawall.deadline``: the ambient time budget, nesting, and how guard calls obey it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import seawall
from seawall import Backoff, DeadlineExceededError, MonotonicClock, Policy, Retry, Timeouts
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio


def make_policy(total: float | None = None, attempts: int = 5, delay: float = 1.0) -> Policy:
    return Policy(
        timeouts=Timeouts(attempt=None, total=total),
        retry=Retry(
            attempts=attempts,
            backoff=Backoff(initial=delay, maximum=delay, jitter=False),
            budget=None,
        ),
        breaker=None,
    )


class Failing:
    """Each call takes ``takes`` seconds of the clock, then raises ConnectionError."""

    def __init__(self, clock: ManualClock, takes: float) -> None:
        self.clock = clock
        self.takes = takes
        self.calls = 0
        self.remaining: list[float | None] = []

    async def __call__(self) -> None:
        self.calls += 1
        self.remaining.append(seawall.deadline_remaining())
        await anyio.lowlevel.checkpoint()
        self.clock.advance(self.takes)
        raise ConnectionError(f"attempt {self.calls}")


# -- the ambient deadline itself -------------------------------------------------------


def test_no_deadline_outside_a_block() -> None:
    assert seawall.deadline_remaining() is None


def test_remaining_follows_the_clock() -> None:
    clock = ManualClock(start=1000.0)
    with seawall.deadline(5.0, clock=clock):
        assert seawall.deadline_remaining() == 5.0
        clock.advance(1.5)
        assert seawall.deadline_remaining() == 3.5
        clock.advance(4.0)
        assert seawall.deadline_remaining() == -0.5  # may go negative
    assert seawall.deadline_remaining() is None


def test_default_clock_is_monotonic() -> None:
    with seawall.deadline(30.0):
        left = seawall.deadline_remaining()
    assert left is not None
    assert 29.0 < left <= 30.0


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        pytest.param(5.0, 10.0, 5.0, id="longer-inner-changes-nothing"),
        pytest.param(10.0, 5.0, 5.0, id="shorter-inner-wins"),
        pytest.param(5.0, 5.0, 5.0, id="equal"),
        pytest.param(5.0, -1.0, -1.0, id="expired-inner"),
        pytest.param(5.0, math.inf, 5.0, id="infinite-inner"),
    ],
)
def test_nested_deadlines_keep_the_earliest(outer: float, inner: float, expected: float) -> None:
    clock = ManualClock()
    with seawall.deadline(outer, clock=clock):
        with seawall.deadline(inner, clock=clock):
            assert seawall.deadline_remaining() == expected
        assert seawall.deadline_remaining() == outer  # restored on exit
    assert seawall.deadline_remaining() is None


def test_nested_deadline_counts_time_already_spent() -> None:
    clock = ManualClock()
    with seawall.deadline(10.0, clock=clock):
        clock.advance(7.0)
        with seawall.deadline(5.0, clock=clock):
            assert seawall.deadline_remaining() == 3.0


def test_nested_deadlines_on_different_clocks() -> None:
    manual = ManualClock()
    with seawall.deadline(100.0), seawall.deadline(5.0, clock=manual):
        assert seawall.deadline_remaining() == 5.0
    with seawall.deadline(5.0, clock=manual), seawall.deadline(100.0):
        left = seawall.deadline_remaining()
        assert left is not None
        assert 4.0 < left <= 5.0  # the outer's time left, on the inner's clock


def test_deadline_is_restored_after_an_error() -> None:
    clock = ManualClock()
    with pytest.raises(KeyError), seawall.deadline(5.0, clock=clock):
        raise KeyError("boom")
    assert seawall.deadline_remaining() is None


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(math.nan, id="nan"),
        pytest.param(True, id="bool"),
        pytest.param("5", id="string"),
        pytest.param(None, id="none"),
        pytest.param([5], id="list"),
    ],
)
def test_seconds_must_be_a_number(seconds: Any) -> None:
    with pytest.raises(ValueError, match="must be a number"), seawall.deadline(seconds):
        pytest.fail("must not enter")  # pragma: no cover
    assert seawall.deadline_remaining() is None


async def test_deadline_in_async_code_reaches_child_tasks() -> None:
    clock = ManualClock()
    seen: dict[str, float | None] = {}

    async def look(name: str) -> None:
        await anyio.lowlevel.checkpoint()
        seen[name] = seawall.deadline_remaining()

    async with anyio.create_task_group() as outside:
        outside.start_soon(look, "started-before")
        with seawall.deadline(5.0, clock=clock):
            await anyio.lowlevel.checkpoint()
            assert seawall.deadline_remaining() == 5.0
            async with anyio.create_task_group() as tg:
                tg.start_soon(look, "child")
            clock.advance(1.0)
            await anyio.lowlevel.checkpoint()
            assert seawall.deadline_remaining() == 4.0
    assert seen == {"started-before": None, "child": 5.0}


async def test_deadline_does_not_cancel_the_block() -> None:
    clock = ManualClock()
    with seawall.deadline(0.0, clock=clock):
        await anyio.lowlevel.checkpoint()
        clock.advance(1.0)
        await anyio.lowlevel.checkpoint()
        assert seawall.deadline_remaining() == -1.0


# -- guard calls obey it --------------------------------------------------------------


async def test_ambient_deadline_caps_a_guard_calls_total() -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(total=30.0, delay=1.0), clock=clock)
    fn = Failing(clock, takes=0.5)
    with seawall.deadline(3.0, clock=clock), pytest.raises(ConnectionError) as info:
        await g.call(fn)
    # attempt 1 ends at 0.5 and sleeps to 1.5; attempt 2 ends at 2.0, and 1 s more
    # of backoff would reach the deadline at 3.0: retrying stops there
    assert fn.calls == 2
    assert fn.remaining == [3.0, 1.5]
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.retry_stopped == "deadline"
    assert clock.now() == 2.0


async def test_policy_total_shorter_than_the_ambient_deadline_wins() -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(total=1.0, delay=1.0), clock=clock)
    fn = Failing(clock, takes=0.25)
    with seawall.deadline(100.0, clock=clock), pytest.raises(ConnectionError) as info:
        await g.call(fn)
    assert fn.calls == 1
    assert seawall.report_of(info.value).retry_stopped == "deadline"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "ambient_clock",
    [
        pytest.param("same", id="guard-clock"),
        pytest.param("monotonic", id="other-clock"),
    ],
)
async def test_expired_ambient_deadline_fails_before_the_first_attempt(ambient_clock: str) -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(), clock=clock)
    fn = Failing(clock, takes=0.0)
    deadline_clock = clock if ambient_clock == "same" else MonotonicClock()
    with seawall.deadline(-0.5, clock=deadline_clock):
        with pytest.raises(DeadlineExceededError) as info:
            await g.call(fn)
        with pytest.raises(DeadlineExceededError) as entered:
            async with g:
                pytest.fail("must not enter")  # pragma: no cover
    assert fn.calls == 0
    for error in (info.value, entered.value):
        assert isinstance(error, TimeoutError)
        assert error.dependency == "db"
        assert error.__cause__ is None
        assert error.report is not None
        assert (error.report.outcome, error.report.attempts) == ("deadline_exceeded", 0)


async def test_ambient_deadline_cuts_a_running_attempt() -> None:
    g = seawall.guard("db", make_policy(total=None))
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        with seawall.deadline(0.01), pytest.raises(DeadlineExceededError) as info:
            await g.call(hang)
    assert calls == 1  # never retried, though TimeoutError subclasses are retryable
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"


async def test_no_ambient_deadline_leaves_the_policy_alone() -> None:
    clock = ManualClock()
    g = seawall.guard("db", make_policy(total=None, attempts=4, delay=100.0), clock=clock)
    fn = Failing(clock, takes=1.0)
    with pytest.raises(ConnectionError) as info:
        await g.call(fn)
    assert fn.calls == 4
    assert fn.remaining == [None] * 4
    assert seawall.report_of(info.value).retry_stopped is None  # type: ignore[union-attr]
