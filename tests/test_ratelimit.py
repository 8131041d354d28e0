"""The token bucket: burst, refill on the clock, reservations by waiters, give-backs.

Every test runs on a ManualClock (or a variant whose sleep parks until the test
lets it go), so refills come from ``clock.advance`` and nothing waits for real.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import seawall
from seawall import Policy, RateLimit, RateLimitedError, Timeouts
from seawall._ratelimit import RateLimiter
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio


class ParkingClock(ManualClock):
    """A ManualClock whose sleep() parks until the test calls :meth:`wake`.

    Time moves only by :meth:`advance`, so a test can hold a waiter in its
    sleep while time passes (a sleep that returns late), then let it go or
    cancel it.
    """

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.parked = 0
        self._gate: anyio.Event | None = None

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self._gate is None:
            self._gate = anyio.Event()
        gate = self._gate
        self.parked += 1
        try:
            await gate.wait()
        finally:
            self.parked -= 1

    def wake(self) -> None:
        """Let every parked sleeper return."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None


async def wait_until(condition: Any, *, turns: int = 1000) -> None:
    for _ in range(turns):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never came true")


def limiter(clock: ManualClock, **kwargs: Any) -> RateLimiter:
    return RateLimiter(RateLimit(**kwargs), clock=clock, dependency="api")


def make_policy(**kwargs: Any) -> Policy:
    return Policy(
        timeouts=Timeouts(attempt=None, total=None),
        retry=None,
        breaker=None,
        rate_limit=RateLimit(**kwargs),
    )


# -- burst and refill -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "burst", "retry_after"),
    [
        pytest.param({"rate": 10}, 10, 0.1, id="burst-defaults-to-rate"),
        pytest.param({"rate": 1, "per": 60.0}, 1, 60.0, id="one-a-minute"),
        pytest.param({"rate": 0.5}, 1, 2.0, id="burst-at-least-one"),
        pytest.param({"rate": 5, "burst": 2}, 2, 0.2, id="small-burst"),
        pytest.param({"rate": 3, "per": 2.0, "burst": 6}, 6, 2 / 3, id="big-burst"),
    ],
)
async def test_burst_then_rejection_with_retry_after(
    config: dict[str, Any], burst: int, retry_after: float
) -> None:
    clock = ManualClock()
    g = seawall.guard("api", make_policy(**config), clock=clock)
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1

    for _ in range(burst):
        await g.call(fn)
    with pytest.raises(RateLimitedError) as info:
        await g.call(fn)
    assert calls == burst
    error = info.value
    assert error.retry_after == pytest.approx(retry_after)
    assert (error.dependency, error.reason) == ("api", "rate_limited")
    assert error.report is not None
    assert (error.report.outcome, error.report.attempts) == ("rate_limited", 0)
    assert clock.slept == []  # max_wait=0: never waits
    # exactly retry_after later, one more call fits
    clock.advance(retry_after)
    await g.call(fn)
    assert calls == burst + 1
    with pytest.raises(RateLimitedError):
        await g.call(fn)


async def test_refill_is_continuous_and_capped_at_burst() -> None:
    clock = ManualClock()
    bucket = limiter(clock, rate=2, per=1.0, burst=3)
    assert bucket.available == 3
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.25)
    assert bucket.available == pytest.approx(0.5)
    assert not bucket.try_acquire()
    clock.advance(0.25)
    assert bucket.try_acquire()
    clock.advance(100.0)
    assert bucket.available == 3  # a quiet spell never banks more than the burst
    assert bucket.statistics() == {"available": 3.0, "rate": 2, "per": 1.0, "burst": 3.0}


async def test_rejection_reports_the_wait_for_the_next_token() -> None:
    clock = ManualClock()
    bucket = limiter(clock, rate=4, per=1.0, burst=1)
    await bucket.acquire()
    clock.advance(0.1)
    with pytest.raises(RateLimitedError) as info:
        await bucket.acquire()
    assert info.value.retry_after == pytest.approx(0.15)
    assert bucket.available == pytest.approx(0.4)  # a rejection takes nothing


async def test_time_going_nowhere_adds_nothing() -> None:
    clock = ManualClock(start=10.0)
    bucket = limiter(clock, rate=1, burst=1)
    assert bucket.try_acquire()
    for _ in range(5):
        assert not bucket.try_acquire()
    assert bucket.available == 0.0


# -- waiting for a token ------------------------------------------------------------------


async def test_call_waits_for_its_token_within_max_wait() -> None:
    clock = ManualClock()
    g = seawall.guard("api", make_policy(rate=1, per=1.0, max_wait=2.0), clock=clock)
    seen: list[float] = []

    async def fn() -> None:
        seen.append(clock.now())

    await g.call(fn)
    await g.call(fn)  # waits 1 s
    assert seen == [0.0, 1.0]
    assert clock.slept == [1.0]
    assert g._rt.limiter is not None
    assert g._rt.limiter.available == 0.0


async def test_waiters_reserve_their_tokens_in_order() -> None:
    clock = ParkingClock()
    bucket = limiter(clock, rate=1, per=1.0, burst=1, max_wait=2.5)
    await bucket.acquire()
    done: list[str] = []

    async def take(name: str) -> None:
        await bucket.acquire()
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "b")
        await wait_until(lambda: clock.parked == 1)
        assert bucket.available == -1.0  # b holds a reservation
        tg.start_soon(take, "c")
        await wait_until(lambda: clock.parked == 2)
        assert clock.slept == [1.0, 2.0]  # c queues behind b
        with pytest.raises(RateLimitedError) as info:
            await bucket.acquire()  # would wait 3 s > max_wait
        assert info.value.retry_after == pytest.approx(3.0)
        assert bucket.available == -2.0
        clock.advance(2.0)
        clock.wake()
    assert sorted(done) == ["b", "c"]
    assert bucket.available == 0.0


async def test_cancelled_waiter_gives_its_token_back() -> None:
    clock = ParkingClock()
    g = seawall.guard("api", make_policy(rate=1, per=1.0, max_wait=5.0), clock=clock)
    bucket = g._rt.limiter
    assert bucket is not None
    await g.call(anyio.lowlevel.checkpoint)
    ran: list[str] = []

    async def fn() -> None:
        ran.append("ran")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(g.call, fn)
            await wait_until(lambda: clock.parked == 1)
            assert bucket.available == -1.0
            tg.cancel_scope.cancel()
    assert ran == []
    assert bucket.available == 0.0
    clock.advance(1.0)
    # the next caller does not wait behind the cancelled one
    assert bucket.try_acquire()


async def test_cancelling_one_waiter_keeps_the_others_reservations() -> None:
    clock = ParkingClock()
    bucket = limiter(clock, rate=1, per=1.0, burst=1, max_wait=10.0)
    assert bucket.try_acquire()
    scopes = [anyio.CancelScope() for _ in range(3)]
    done: list[int] = []

    async def take(i: int) -> None:
        with scopes[i]:
            await bucket.acquire()
            done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(take, i)
            await wait_until(lambda: clock.parked == i + 1)  # noqa: B023
        assert bucket.available == -3.0
        scopes[1].cancel()
        await wait_until(lambda: clock.parked == 2)
        assert bucket.available == -2.0
        clock.advance(3.0)
        clock.wake()
    assert sorted(done) == [0, 2]
    assert bucket.available == 1.0
    assert bucket.try_acquire()


async def test_give_back_after_a_late_wake_never_exceeds_the_burst() -> None:
    """A waiter whose sleep ran long is cancelled after the bucket refilled to full:
    the token it gives back must not push the bucket past its burst."""
    clock = ParkingClock()
    bucket = limiter(clock, rate=1, per=1.0, burst=1, max_wait=5.0)
    assert bucket.try_acquire()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bucket.acquire)
            await wait_until(lambda: clock.parked == 1)
            clock.advance(10.0)
            assert bucket.available == 1.0  # refilled, the reservation long paid
            scope.cancel()
    assert bucket.available == 1.0
    assert bucket.try_acquire()
    assert not bucket.try_acquire()  # the burst is one token, not two


async def test_rate_limit_applies_to_async_with() -> None:
    clock = ManualClock()
    g = seawall.guard("api", make_policy(rate=1, per=10.0), clock=clock)
    async with g:
        pass
    with pytest.raises(RateLimitedError) as info:
        async with g:
            pytest.fail("must not enter")  # pragma: no cover
    assert info.value.retry_after == pytest.approx(10.0)
    assert info.value.report is not None
    assert info.value.report.attempts == 0
