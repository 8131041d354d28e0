"""The bulkhead: a cap on calls in flight, fail fast or a bounded wait, no leaked slot.

A waiter is let in by releasing a slot from the test, never by sleeping; the one
test of ``max_wait`` running out waits 50 ms of real time, since that wait is on
anyio's clock.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import seawall
from seawall import (
    Bulkhead,
    BulkheadFullError,
    BulkheadStatistics,
    CircuitBreaker,
    Policy,
    Timeouts,
)
from seawall._bulkhead import BulkheadHandle

pytestmark = pytest.mark.anyio

MAX_WAIT = 0.05  # real seconds, only where the wait itself is under test


def handle(max_concurrent: int = 1, max_wait: float = 0.0) -> BulkheadHandle:
    return BulkheadHandle(
        Bulkhead(max_concurrent=max_concurrent, max_wait=max_wait), dependency="db"
    )


def make_policy(max_concurrent: int = 1, max_wait: float = 0.0, **parts: Any) -> Policy:
    base: dict[str, Any] = {
        "timeouts": Timeouts(attempt=None, total=None),
        "retry": None,
        "breaker": None,
        "bulkhead": Bulkhead(max_concurrent=max_concurrent, max_wait=max_wait),
    }
    base.update(parts)
    return Policy(**base)


async def wait_until(condition: Any, *, turns: int = 1000) -> None:
    """Let other tasks run until *condition()* holds (a bounded number of turns)."""
    for _ in range(turns):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never came true")


def stats(h: BulkheadHandle) -> tuple[int, int, int]:
    s = h.statistics()
    return (s.in_use, s.limit, s.waiting)


# -- statistics ---------------------------------------------------------------------


async def test_statistics_follow_slots_and_waiters() -> None:
    h = handle(max_concurrent=2, max_wait=30.0)
    assert h.statistics() == BulkheadStatistics(in_use=0, limit=2, waiting=0)
    a = h.try_acquire()
    b = await h.acquire()
    assert a is not None
    assert a is not b
    assert stats(h) == (2, 2, 0)
    assert h.statistics().as_dict() == {"in_use": 2, "limit": 2, "waiting": 0}
    assert repr(h) == "<BulkheadHandle 'db' 2/2 waiting=0>"
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.acquire)
        tg.start_soon(h.acquire)
        await wait_until(lambda: h.statistics().waiting == 2)
        assert stats(h) == (2, 2, 2)
        assert repr(h) == "<BulkheadHandle 'db' 2/2 waiting=2>"
        tg.cancel_scope.cancel()
    assert stats(h) == (2, 2, 0)
    h.release(a)
    h.release(b)
    assert stats(h) == (0, 2, 0)


def test_statistics_are_frozen() -> None:
    snapshot = handle().statistics()
    with pytest.raises(AttributeError):
        snapshot.in_use = 3  # type: ignore[misc]


async def test_release_of_an_unknown_token_is_an_error() -> None:
    h = handle()
    with pytest.raises(RuntimeError):
        h.release(object())
    token = h.try_acquire()
    assert token is not None
    h.release(token)
    with pytest.raises(RuntimeError):
        h.release(token)  # twice
    assert stats(h) == (0, 1, 0)


# -- fail fast ---------------------------------------------------------------------


async def test_max_wait_zero_fails_at_once() -> None:
    h = handle(max_concurrent=1, max_wait=0.0)
    token = h.try_acquire()
    assert token is not None
    assert h.try_acquire() is None
    with anyio.CancelScope() as scope:
        scope.cancel()  # acquire() must not even reach a checkpoint
        with pytest.raises(BulkheadFullError) as info:
            await h.acquire()
    assert info.value.dependency == "db"
    assert info.value.reason == "bulkhead_full"
    assert "1 calls in flight" in str(info.value)
    assert stats(h) == (1, 1, 0)
    h.release(token)
    other = await h.acquire()  # a free slot is taken without waiting
    assert stats(h) == (1, 1, 0)
    h.release(other)


async def test_guard_with_a_full_bulkhead_fails_fast_and_never_calls() -> None:
    g = seawall.guard("db", make_policy(max_concurrent=2, breaker=CircuitBreaker()))
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1

    async with g, g:  # both slots
        with pytest.raises(BulkheadFullError) as info:
            await g.call(fn)
        assert g.bulkhead is not None
        assert g.bulkhead.statistics().waiting == 0
    assert calls == 0
    report = info.value.report
    assert report is not None
    assert (report.outcome, report.attempts, report.dependency) == ("bulkhead_full", 0, "db")
    assert seawall.report_of(info.value) is report
    assert g.breaker is not None
    assert g.breaker.statistics().calls == 2  # the rejection is no breaker outcome


async def test_slots_are_per_call_not_per_task() -> None:
    """One task can hold several slots (nested calls), each released on its own."""
    g = seawall.guard("db", make_policy(max_concurrent=2))
    assert g.bulkhead is not None
    seen: list[int] = []

    async def inner() -> str:
        seen.append(g.bulkhead.statistics().in_use)  # type: ignore[union-attr]
        return "inner"

    async def outer() -> str:
        seen.append(g.bulkhead.statistics().in_use)  # type: ignore[union-attr]
        result = await g.call(inner)
        with pytest.raises(BulkheadFullError):
            await g.call(g.call, inner)  # a third slot in the same task: none left
        return result

    assert await g.call(outer) == "inner"
    assert seen == [1, 2]
    assert g.bulkhead.statistics().in_use == 0


# -- bounded wait ---------------------------------------------------------------------


async def test_waiter_gets_the_slot_when_it_is_freed() -> None:
    g = seawall.guard("db", make_policy(max_concurrent=1, max_wait=30.0))
    assert g.bulkhead is not None
    holder = g.bulkhead.try_acquire()
    assert holder is not None
    results: list[object] = []

    async def fn() -> str:
        results.append(g.bulkhead.statistics().in_use)  # type: ignore[union-attr]
        return "ok"

    async def caller() -> None:
        results.append(await g.call(fn))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until(lambda: g.bulkhead.statistics().waiting == 1)  # type: ignore[union-attr]
            assert results == []
            g.bulkhead.release(holder)
    assert results == [1, "ok"]
    assert stats(g.bulkhead) == (0, 1, 0)


async def test_waiters_are_served_in_arrival_order() -> None:
    h = handle(max_concurrent=1, max_wait=30.0)
    first = h.try_acquire()
    assert first is not None
    order: list[int] = []
    tokens: dict[int, object] = {}

    async def waiter(i: int) -> None:
        tokens[i] = await h.acquire()
        order.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(waiter, i)
                await wait_until(lambda: h.statistics().waiting == i + 1)  # noqa: B023
            # a newcomer does not jump the queue, even right after a release
            h.release(first)
            assert h.try_acquire() is None
            for i in range(5):
                await wait_until(lambda: len(order) == i + 1)  # noqa: B023
                h.release(tokens[i])
    assert order == [0, 1, 2, 3, 4]
    assert stats(h) == (0, 1, 0)


async def test_wait_ends_after_max_wait() -> None:
    g = seawall.guard("db", make_policy(max_concurrent=1, max_wait=MAX_WAIT))
    assert g.bulkhead is not None
    holder = g.bulkhead.try_acquire()
    assert holder is not None
    with anyio.fail_after(5):
        began = anyio.current_time()
        with pytest.raises(BulkheadFullError):
            await g.call(anyio.lowlevel.checkpoint)
        waited = anyio.current_time() - began
    assert MAX_WAIT * 0.8 <= waited < 2.0
    assert stats(g.bulkhead) == (1, 1, 0)
    g.bulkhead.release(holder)
    assert stats(g.bulkhead) == (0, 1, 0)


# -- cancellation never leaks a slot ----------------------------------------------------


async def test_cancelled_waiter_leaves_the_queue() -> None:
    h = handle(max_concurrent=1, max_wait=30.0)
    holder = h.try_acquire()
    assert holder is not None
    kept: list[object] = []
    cancelled = anyio.CancelScope()

    async def first_waiter() -> None:
        with cancelled:
            await h.acquire()
            kept.append("the cancelled waiter got a slot")  # pragma: no cover

    async def second_waiter() -> None:
        kept.append(await h.acquire())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_waiter)
            await wait_until(lambda: h.statistics().waiting == 1)
            tg.start_soon(second_waiter)
            await wait_until(lambda: h.statistics().waiting == 2)
            cancelled.cancel()
            await wait_until(lambda: h.statistics().waiting == 1)
            assert stats(h) == (1, 1, 1)
            h.release(holder)  # goes to the second waiter, first in line now
    assert cancelled.cancelled_caught
    assert len(kept) == 1
    assert stats(h) == (1, 1, 0)
    h.release(kept[0])
    assert stats(h) == (0, 1, 0)


@pytest.mark.parametrize(
    "release_first",
    [pytest.param(True, id="release-then-cancel"), pytest.param(False, id="cancel-then-release")],
)
async def test_cancel_racing_the_grant_leaks_nothing(release_first: bool) -> None:
    """The slot is handed over and the waiter cancelled in the same instant."""
    g = seawall.guard("db", make_policy(max_concurrent=1, max_wait=30.0))
    assert g.bulkhead is not None
    holder = g.bulkhead.try_acquire()
    assert holder is not None
    ran: list[str] = []
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await g.call(lambda: anyio.lowlevel.checkpoint())
            ran.append("ran")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until(lambda: g.bulkhead.statistics().waiting == 1)  # type: ignore[union-attr]
            if release_first:
                g.bulkhead.release(holder)
                scope.cancel()
            else:
                scope.cancel()
                g.bulkhead.release(holder)
    assert ran == []
    assert scope.cancelled_caught
    assert stats(g.bulkhead) == (0, 1, 0)
    assert await g.call(lambda: anyio.lowlevel.checkpoint()) is None  # the slot is usable


async def test_cancelled_call_releases_its_slot() -> None:
    g = seawall.guard("db", make_policy(max_concurrent=1, breaker=CircuitBreaker()))
    assert g.bulkhead is not None
    assert g.breaker is not None
    inside = anyio.Event()

    async def fn() -> None:
        inside.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(g.call, fn)
        await inside.wait()
        assert stats(g.bulkhead) == (1, 1, 0)
        tg.cancel_scope.cancel()
    assert stats(g.bulkhead) == (0, 1, 0)
    assert g.breaker.statistics().calls == 0  # a cancelled call is no outcome


async def test_many_waiters_cancelled_at_random() -> None:
    rng = random.Random(20240611)
    g = seawall.guard("db", make_policy(max_concurrent=3, max_wait=30.0))
    h = g.bulkhead
    assert h is not None
    holders = [h.try_acquire() for _ in range(3)]
    scopes: list[anyio.CancelScope] = []
    finished = 0

    async def caller(scope: anyio.CancelScope) -> None:
        nonlocal finished
        with scope:
            await g.call(anyio.sleep, 0)
            finished += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                scope = anyio.CancelScope()
                scopes.append(scope)
                tg.start_soon(caller, scope)
            await wait_until(lambda: h.statistics().waiting == 200)
            rng.shuffle(scopes)
            for scope in scopes[:120]:
                scope.cancel()
                if rng.random() < 0.5:
                    await anyio.lowlevel.checkpoint()
            for token in holders:
                assert token is not None
                h.release(token)
    assert finished == 80
    assert stats(h) == (0, 3, 0)
