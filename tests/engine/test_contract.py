"""The engine's contract: every admission and deadline scenario gives the same
outcome through both front ends (``seawall.guard`` and ``ResilientClient``),
on asyncio and on trio, against a real loopback server.

Each scenario names what the caller must get; a front end that waits past
the deadline, or refuses differently, fails it. Outcomes are asserted, not
durations: a slow machine changes how long a scenario takes, never what it
returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

import seawall
from seawall import (
    Breaker,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Policy,
    RateLimit,
    RateLimitedError,
    Registry,
    Retry,
    Timeouts,
)
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)
QUIET = Timeouts(attempt=None, total=None)


class FrontEnd:
    """One front end under test: ``get(path)`` is a call to the upstream through it."""

    def __init__(self, kind: str, upstream: FaultyUpstream, policy: Policy) -> None:
        self.kind = kind
        self.upstream = upstream
        registry = Registry()
        if kind == "client":
            self.client = seawall.ResilientClient("dep", policy=policy, base_url=upstream.url)
            self.breaker: Breaker | None = self.client.resilient_transport.runtime.breaker
            self.bulkhead = self.client.resilient_transport.runtime.bulkhead
        else:
            self.raw = httpx.AsyncClient(base_url=upstream.url, timeout=None)
            self.guard = seawall.guard("dep", policy, registry=registry)
            self.breaker = self.guard.breaker
            self.bulkhead = self.guard.bulkhead

    async def get(self, path: str) -> int:
        if self.kind == "client":
            return (await self.client.get(path)).status_code

        async def fetch() -> int:
            return (await self.raw.get(path)).status_code

        return await self.guard.call(fetch)

    async def aclose(self) -> None:
        if self.kind == "client":
            await self.client.aclose()
        else:
            await self.raw.aclose()


@pytest.fixture(params=["guard", "client"])
def make(request: pytest.FixtureRequest, upstream: FaultyUpstream) -> Callable[[Policy], FrontEnd]:
    def build(policy: Policy) -> FrontEnd:
        return FrontEnd(request.param, upstream, policy)

    return build


async def outcomes(calls: list[Callable[[], Awaitable[Any]]]) -> list[str]:
    """Run *calls* concurrently; what each returned (a status) or raised (the error's name)."""
    got: list[str] = [""] * len(calls)

    async def one(i: int) -> None:
        try:
            got[i] = str(await calls[i]())
        except Exception as exc:
            got[i] = type(exc).__name__

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
            await anyio.sleep(0.02)  # arrive in order
    return got


async def test_the_total_deadline_bounds_the_bulkhead_queue(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    upstream.route("/slow", Fault.latency(0.6))
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=None, total=0.4),
            retry=None,
            breaker=None,
            bulkhead=Bulkhead(max_concurrent=1, max_wait=5),
        )
    )
    with anyio.fail_after(5):
        got = await outcomes([lambda: fe.get("/slow")] * 3)
    # The first is cut by its deadline; the others spent theirs in the queue
    # (and in whatever attempt the few milliseconds left allowed).
    assert got == ["DeadlineExceededError"] * 3
    assert fe.bulkhead is not None
    assert fe.bulkhead.statistics().in_use == 0
    await fe.aclose()


async def test_the_ambient_deadline_bounds_the_bulkhead_queue(
    make: Callable[[Policy], FrontEnd],
) -> None:
    fe = make(Policy(timeouts=QUIET, retry=None, breaker=None, bulkhead=Bulkhead(max_wait=5)))
    assert fe.bulkhead is not None
    held = [fe.bulkhead.try_acquire() for _ in range(fe.bulkhead.config.max_concurrent)]
    with anyio.fail_after(3), seawall.deadline(0.3), pytest.raises(DeadlineExceededError) as info:
        await fe.get("/")
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 0
    for slot in held:
        fe.bulkhead.release(slot)
    assert fe.bulkhead.statistics().waiting == 0
    await fe.aclose()


async def test_a_token_wait_longer_than_the_deadline_is_refused_at_once(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=None, total=1.0),
            retry=None,
            breaker=None,
            rate_limit=RateLimit(rate=1, per=2, max_wait=5),
        )
    )
    assert await fe.get("/") == 200
    with anyio.fail_after(0.5), pytest.raises(RateLimitedError) as info:
        await fe.get("/")
    assert info.value.retry_after is not None
    assert info.value.retry_after > 1.0
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 0
    assert upstream.count() == 1
    await fe.aclose()


async def test_a_token_wait_within_the_deadline_is_waited(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=None, total=5.0),
            retry=None,
            breaker=None,
            rate_limit=RateLimit(rate=20, per=1, burst=1, max_wait=1),
        )
    )
    with anyio.fail_after(3):
        assert [await fe.get("/"), await fe.get("/")] == [200, 200]
    assert upstream.count() == 2
    await fe.aclose()


async def test_a_spent_ambient_deadline_sends_nothing(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    fe = make(Policy(timeouts=QUIET, breaker=None))
    with seawall.deadline(0.0), pytest.raises(DeadlineExceededError) as info:
        await fe.get("/")
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 0
    assert upstream.count() == 0
    await fe.aclose()


async def test_an_attempt_cut_by_its_timeout_is_retried(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    upstream.route("/flaky", Fault.hang(), Fault.ok())
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=0.3, total=5.0),
            retry=Retry(attempts=2, backoff=NO_WAIT, budget=None),
            breaker=None,
        )
    )
    with anyio.fail_after(4):
        assert await fe.get("/flaky") == 200
    assert upstream.count("/flaky") == 2
    await fe.aclose()


async def test_the_total_deadline_cuts_an_attempt_and_is_never_retried(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    upstream.route("/hang", Fault.hang())
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=10.0, total=0.3),
            retry=Retry(attempts=3, backoff=NO_WAIT, budget=None),
            breaker=None,
        )
    )
    with anyio.fail_after(3), pytest.raises(DeadlineExceededError) as info:
        await fe.get("/hang")
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts) == ("deadline_exceeded", 1)
    assert upstream.count("/hang") == 1
    await fe.aclose()


async def test_an_open_breaker_refuses_without_sending(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    fe = make(Policy(timeouts=QUIET, breaker=CircuitBreaker()))
    assert fe.breaker is not None
    fe.breaker.force_open()
    with pytest.raises(CircuitOpenError) as info:
        await fe.get("/")
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts) == ("circuit_open", 0)
    assert upstream.count() == 0
    await fe.aclose()


async def test_a_full_bulkhead_without_a_queue_refuses_at_once(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    fe = make(Policy(timeouts=QUIET, breaker=None, bulkhead=Bulkhead(max_concurrent=1, max_wait=0)))
    assert fe.bulkhead is not None
    held = fe.bulkhead.try_acquire()
    with pytest.raises(BulkheadFullError) as info:
        await fe.get("/")
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 0
    fe.bulkhead.release(held)  # type: ignore[arg-type]
    assert upstream.count() == 0
    await fe.aclose()


async def test_an_attempt_refused_after_a_retry_reports_the_rejection(
    make: Callable[[Policy], FrontEnd], upstream: FaultyUpstream
) -> None:
    upstream.route("/down", Fault.hang())
    fe = make(
        Policy(
            timeouts=Timeouts(attempt=0.2, total=5.0),
            retry=Retry(attempts=3, backoff=NO_WAIT, budget=None),
            breaker=CircuitBreaker(minimum_calls=1, failure_rate_threshold=1.0, window_size=1),
        )
    )
    with anyio.fail_after(4), pytest.raises((CircuitOpenError, httpx.ReadTimeout)) as info:
        await fe.get("/down")
    # The first attempt's timeout opened the breaker: the retry it wanted was refused.
    assert isinstance(info.value, CircuitOpenError)
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == 1
    assert upstream.count("/down") == 1
    await fe.aclose()
