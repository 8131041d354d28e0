"""An adaptive bulkhead at run time: a limit that moves under calls in flight.

The limit is moved by the calls themselves, as in production: each attempt's
latency goes to ``observe`` (the engine's hook), measured on a ManualClock
that the called function advances. The first sample starts a probe; when no
call ends with few in flight for PROBE_PATIENCE, it holds the limit at a quarter
(5 of 20), and its end brings the limit back: a lower and a higher limit on
demand, with no sleeping.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import seawall
from seawall import AdaptiveLimit, Bulkhead, BulkheadFullError, Policy, Timeouts
from seawall._adaptive import PROBE_PATIENCE, PROBE_SAMPLES
from seawall._bulkhead import BulkheadHandle
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio

MS = 0.001


def adaptive_handle(
    clock: ManualClock, *, max_concurrent: int = 40, max_wait: float = 0.0, **kw: Any
) -> BulkheadHandle:
    kw.setdefault("initial", 20)
    config = Bulkhead(
        max_concurrent=max_concurrent, max_wait=max_wait, adaptive=AdaptiveLimit(**kw)
    )
    return BulkheadHandle(config, dependency="api", clock=clock)


def start_probe(h: BulkheadHandle, clock: ManualClock) -> None:
    """Samples with 6 in flight for PROBE_PATIENCE: the probe holds the limit at a quarter of 20."""
    tokens = [h.try_acquire() for _ in range(6)]
    h.observe(10 * MS, False)
    clock.advance(PROBE_PATIENCE)
    h.observe(10 * MS, False)
    for token in tokens:
        h.release(token)  # type: ignore[arg-type]
    assert h.statistics().limit == 5


def finish_probe(h: BulkheadHandle, clock: ManualClock) -> None:
    """PROBE_SAMPLES calls admitted after the probe began: the limit comes back."""
    clock.advance(11 * MS)
    for _ in range(PROBE_SAMPLES):
        h.observe(10 * MS, False)


async def wait_until(condition: Any, *, turns: int = 1000) -> None:
    for _ in range(turns):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never came true")


def counts(h: BulkheadHandle) -> tuple[int, int, int]:
    """Our own count, the limiter's, and the limiter's total: they must agree."""
    limiter = h._limiter
    return h._in_use, limiter.borrowed_tokens, int(limiter.total_tokens)


async def test_a_lower_limit_takes_no_slot_back_and_admits_again_once_below_it() -> None:
    clock = ManualClock()
    h = adaptive_handle(clock)
    tokens = [h.try_acquire() for _ in range(12)]
    assert all(t is not None for t in tokens)
    h.observe(10 * MS, False)
    clock.advance(PROBE_PATIENCE)
    h.observe(10 * MS, False)  # the probe holds the limit at 5 under 12 calls in flight
    assert counts(h) == (12, 12, 5)
    assert h.try_acquire() is None
    for token in tokens[:8]:  # 4 left in flight: one more fits under 5
        h.release(token)  # type: ignore[arg-type]
    extra = h.try_acquire()
    assert extra is not None
    assert h.try_acquire() is None
    for token in [*tokens[8:], extra]:
        h.release(token)  # type: ignore[arg-type]
    assert counts(h) == (0, 0, 5)


async def test_a_higher_limit_hands_free_slots_to_waiters_at_once() -> None:
    clock = ManualClock()
    h = adaptive_handle(clock, max_wait=30.0)
    start_probe(h, clock)
    held = [h.try_acquire() for _ in range(5)]
    got: list[object] = []

    async def waiter() -> None:
        got.append(await h.acquire())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await wait_until(lambda: h.statistics().waiting == 3)
        finish_probe(h, clock)  # back to 20: the waiters get slots without any release
        await wait_until(lambda: len(got) == 3)
    assert h.statistics().limit == 20
    assert counts(h) == (8, 8, 20)
    for token in [*held, *got]:
        h.release(token)  # type: ignore[arg-type]
    assert counts(h) == (0, 0, 20)


async def test_cancelled_waiters_leak_no_slot_while_the_limit_moves() -> None:
    clock = ManualClock()
    h = adaptive_handle(clock, max_wait=30.0)
    start_probe(h, clock)
    held = [h.try_acquire() for _ in range(5)]
    got: list[object] = []

    async def waiter() -> None:
        got.append(await h.acquire())

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(waiter)
        await wait_until(lambda: h.statistics().waiting == 6)
        # Raise the limit to 20 and cancel in the same turn: slots granted as
        # the cancellation lands go back to the limiter, not to nobody.
        finish_probe(h, clock)
        tg.cancel_scope.cancel()
    for token in [*held, *got]:
        h.release(token)  # type: ignore[arg-type]
    assert counts(h) == (0, 0, 20)
    assert h.statistics().waiting == 0


async def test_a_slot_released_twice_raises_and_leaves_the_counts_right() -> None:
    h = adaptive_handle(ManualClock())
    token = h.try_acquire()
    assert token is not None
    h.release(token)
    with pytest.raises(RuntimeError):
        h.release(token)
    assert counts(h) == (0, 0, 20)


async def test_a_slot_goes_back_to_the_bulkhead_that_gave_it() -> None:
    old = adaptive_handle(ManualClock())
    new = adaptive_handle(ManualClock())
    token = old.try_acquire()
    assert token is not None
    new.release(token)  # a reload replaced the bulkhead while the call ran
    assert counts(old) == (0, 0, 20)
    assert counts(new) == (0, 0, 20)


async def test_the_rejection_says_the_adaptive_limit_refused_and_what_it_was() -> None:
    clock = ManualClock()
    h = adaptive_handle(clock)
    start_probe(h, clock)
    error = h.rejection()
    assert isinstance(error, BulkheadFullError)
    assert (error.reason, error.detail, error.limit) == ("bulkhead_full", "adaptive", 5)
    assert "adaptive limit" in str(error)
    assert "5 calls" in str(error)
    static = BulkheadHandle(Bulkhead(max_concurrent=3), dependency="db").rejection()
    assert (static.reason, static.detail, static.limit) == ("bulkhead_full", None, 3)


async def test_statistics_show_the_live_limit_and_the_minimum_rtt() -> None:
    clock = ManualClock()
    h = adaptive_handle(clock)
    assert h.statistics().as_dict() == {
        "in_use": 0,
        "limit": 20,
        "waiting": 0,
        "adaptive": {
            "algorithm": "gradient",
            "min_limit": 1,
            "max_limit": 40,
            "min_rtt": None,
            "rtt": None,
            "probing": False,
        },
    }
    start_probe(h, clock)
    assert h.statistics().adaptive.probing  # type: ignore[union-attr]
    finish_probe(h, clock)
    s = h.statistics()
    assert s.limit == 20
    assert s.adaptive is not None
    assert s.adaptive.min_rtt == pytest.approx(10 * MS)
    assert repr(h) == "<BulkheadHandle 'api' 0/20 waiting=0>"
    static = BulkheadHandle(Bulkhead(max_concurrent=3), dependency="db")
    assert static.statistics().as_dict() == {"in_use": 0, "limit": 3, "waiting": 0}
    assert static.statistics().adaptive is None


def adaptive_policy(**kw: Any) -> Policy:
    return Policy(
        timeouts=Timeouts(attempt=None, total=None),
        retry=None,
        breaker=None,
        bulkhead=Bulkhead(max_concurrent=40, adaptive=AdaptiveLimit(initial=20, **kw)),
    )


async def test_guarded_calls_teach_the_limit_through_the_engine() -> None:
    clock = ManualClock()
    g = seawall.guard("search", adaptive_policy(), registry=seawall.Registry(), clock=clock)

    async def query(seconds: float) -> str:
        clock.advance(seconds)  # the engine times the attempt on the runtime's clock
        return "hits"

    assert await g.call(query, 0.010) == "hits"  # starts the probe
    for _ in range(PROBE_SAMPLES):
        await g.call(query, 0.010)
    s = g.bulkhead.statistics()  # type: ignore[union-attr]
    assert s.adaptive is not None
    assert s.adaptive.min_rtt == pytest.approx(0.010)
    assert (s.limit, s.in_use) == (20, 0)

    async def timing_out() -> str:
        clock.advance(1.0)
        raise TimeoutError("the database did not answer")

    with pytest.raises(TimeoutError):
        await g.call(timing_out)
    assert g.bulkhead.statistics().limit == 18  # type: ignore[union-attr]


async def test_calls_over_the_adaptive_limit_fail_fast_with_its_reason() -> None:
    clock = ManualClock()
    g = seawall.guard("search", adaptive_policy(), registry=seawall.Registry(), clock=clock)
    release = anyio.Event()
    outcomes: list[str] = []

    async def held() -> None:
        await release.wait()

    async def call() -> None:
        try:
            await g.call(held)
        except BulkheadFullError as exc:
            reported = seawall.report_of(exc) is not None
            outcomes.append(f"{exc.reason}/{exc.detail}/{exc.limit}/{reported}")
        else:
            outcomes.append("ok")

    async with anyio.create_task_group() as tg:
        for _ in range(22):
            tg.start_soon(call)
        await wait_until(lambda: len(outcomes) == 2)
        release.set()
    assert sorted(outcomes)[:2] == ["bulkhead_full/adaptive/20/True"] * 2
    assert outcomes.count("ok") == 20


async def test_http_calls_teach_the_limit_and_the_snapshot_shows_it() -> None:
    clock = ManualClock()

    def answer(request: httpx.Request) -> httpx.Response:
        clock.advance(0.020)
        return httpx.Response(200, text="ok")

    registry = seawall.Registry(clock=clock)
    registry.add(
        "pricing",
        base_url="http://pricing.test",
        policy=adaptive_policy(),
        transport=httpx.MockTransport(answer),
    )
    async with registry:
        client = registry.client("pricing")
        for _ in range(PROBE_SAMPLES + 1):
            assert (await client.get("/price")).status_code == 200
        entry = registry.snapshot()["dependencies"]["pricing"]["bulkhead"]
    assert entry["limit"] == 20
    assert entry["in_use"] == 0
    assert entry["adaptive"]["min_rtt"] == pytest.approx(0.020)
    assert entry["adaptive"]["algorithm"] == "gradient"


async def test_a_reload_that_replaces_the_bulkhead_mid_call_leaks_nothing() -> None:
    registry = seawall.Registry()
    data = {
        "dependencies": {
            "jobs": {"retry": False, "breaker": False, "bulkhead": {"max_concurrent": 5}}
        }
    }
    registry.reload(data)
    g = registry.guard("jobs")
    old = g.bulkhead
    assert old is not None
    entered, release = anyio.Event(), anyio.Event()

    async def job() -> str:
        entered.set()
        await release.wait()
        return "done"

    async with anyio.create_task_group() as tg:
        results: list[str] = []

        async def run() -> None:
            results.append(await g.call(job))

        tg.start_soon(run)
        await entered.wait()
        data["dependencies"]["jobs"]["bulkhead"] = {  # type: ignore[index]
            "max_concurrent": 5,
            "adaptive": {"initial": 4},
        }
        registry.reload(data)
        assert g.bulkhead is not old
        release.set()
    assert results == ["done"]
    assert counts(old) == (0, 0, 5)
    assert g.bulkhead is not None
    assert g.bulkhead.statistics().in_use == 0


async def test_many_calls_while_the_limit_moves_leave_every_count_at_zero() -> None:
    clock = ManualClock()
    g = seawall.guard(
        "mixed",
        adaptive_policy(probe_interval=0.5),
        registry=seawall.Registry(),
        clock=clock,
    )
    refused = 0

    async def work(seconds: float, fail: bool) -> None:
        await anyio.lowlevel.checkpoint()
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()
        if fail:
            raise TimeoutError

    async def caller(i: int) -> None:
        nonlocal refused
        for j in range(30):
            try:
                await g.call(work, 0.001 * ((i * j) % 40), fail=(i + j) % 17 == 0)
            except BulkheadFullError:
                refused += 1
            except TimeoutError:
                pass

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(caller, i)
    h = g.bulkhead
    assert h is not None
    assert counts(h)[:2] == (0, 0)
    assert h.statistics().waiting == 0
    assert refused > 0
    assert 1 <= h.statistics().limit <= 40
