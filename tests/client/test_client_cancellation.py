"""Cancellation releases everything; rejections fail fast and send nothing."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]
Until = Callable[..., object]


def _pool_connections(client: seawall.ResilientClient) -> list[object]:
    inner = client.resilient_transport.inner
    assert isinstance(inner, httpx.AsyncHTTPTransport)
    return list(inner._pool.connections)


async def _no_server_connections(upstream: FaultyUpstream) -> bool:
    return await anyio.to_thread.run_sync(upstream.wait_for_open_connections, 0)


@pytest.mark.parametrize("how", ["move_on_after", "sibling_cancels_scope", "task_group"])
async def test_cancelled_call_releases_its_connection_and_bulkhead_slot(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    until: Until,
    how: str,
) -> None:
    upstream.route("/hang", Fault.hang())
    p = policy(
        timeouts=seawall.Timeouts(read=5.0, pool=0.5),
        bulkhead=seawall.Bulkhead(max_concurrent=1),
        pool=seawall.Pool(max_connections=1, max_keepalive=1),
    )
    async with make_client("svc", policy=p, base_url=upstream.url) as client:
        bulkhead = client.bulkhead
        assert await _no_server_connections(upstream)
        in_flight: list[tuple[int, int, int]] = []

        async def observe() -> None:
            await until(lambda: upstream.count("/hang") == 1)  # type: ignore[operator]
            in_flight.append(
                (
                    bulkhead.statistics().in_use,
                    len(_pool_connections(client)),
                    upstream.open_connections,
                )
            )

        if how == "move_on_after":
            with anyio.move_on_after(0.15) as timed:
                await client.get("/hang")
            assert timed.cancelled_caught
        elif how == "sibling_cancels_scope":
            scope = anyio.CancelScope()

            async def cancel_when_sent() -> None:
                await observe()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_sent)
                with scope:
                    await client.get("/hang")
            assert scope.cancelled_caught
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, "/hang")
                await observe()
                tg.cancel_scope.cancel()
        if how != "move_on_after":
            assert in_flight == [(1, 1, 1)]
        assert upstream.count("/hang") == 1
        assert bulkhead.statistics().in_use == 0
        assert _pool_connections(client) == []
        assert await _no_server_connections(upstream)
        # The one pool connection and the one slot are usable again at once.
        response = await client.get("/ok")
        assert response.status_code == 200
        assert seawall.report_of(response).attempts == 1  # type: ignore[union-attr]


async def test_cancelled_during_body_download_releases_the_connection(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/slow-body", Fault(body=b"x" * 1000, body_delay=5.0))
    p = policy(
        timeouts=seawall.Timeouts(read=10.0, pool=0.5, attempt=None),
        bulkhead=seawall.Bulkhead(max_concurrent=1),
    )
    async with make_client("svc", policy=p, base_url=upstream.url) as client:
        with anyio.move_on_after(0.15):
            await client.get("/slow-body")
        assert client.bulkhead.statistics().in_use == 0
        assert _pool_connections(client) == []
        assert await _no_server_connections(upstream)


async def test_cancelled_during_backoff_sends_no_more_attempts(
    upstream: FaultyUpstream, make_client: ClientFactory, until: Until
) -> None:
    upstream.route("/x", Fault.error(503))
    policy = seawall.Policy(
        breaker=None,
        bulkhead=seawall.Bulkhead(max_concurrent=1),
        retry=seawall.Retry(budget=None, backoff=seawall.Backoff(initial=5.0, jitter=False)),
    )
    async with make_client("svc", policy=policy, base_url=upstream.url) as client:
        during_backoff: list[int] = []

        async def watch() -> None:
            await until(lambda: upstream.count("/x") == 1)  # type: ignore[operator]
            await anyio.sleep(0.05)
            during_backoff.append(client.bulkhead.statistics().in_use)

        with anyio.move_on_after(0.2) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await client.get("/x")
        assert scope.cancelled_caught
        # No slot is held while waiting between attempts.
        assert during_backoff == [0]
        assert client.bulkhead.statistics().in_use == 0
    assert upstream.count("/x") == 1


async def test_cancelled_half_open_probe_returns_its_permit(
    upstream: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
    until: Until,
) -> None:
    upstream.route("/x", Fault.error(500))
    upstream.route("/hang", Fault.hang())
    breaker = seawall.CircuitBreaker(
        minimum_calls=1, window_size=1, open_duration=10, half_open_calls=1
    )
    p = policy(retry=None, breaker=breaker, timeouts=seawall.Timeouts(read=5.0))
    async with make_client("svc", policy=p, base_url=upstream.url, clock=clock) as client:
        assert (await client.get("/x")).status_code == 500
        assert client.breaker.state is seawall.BreakerState.OPEN
        clock.advance(10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hang")  # takes the only probe permit
            await until(lambda: upstream.count("/hang") == 1)  # type: ignore[operator]
            assert client.breaker.statistics().half_open_permits_in_use == 1
            with pytest.raises(seawall.CircuitOpenError):
                await client.get("/ok")
            tg.cancel_scope.cancel()
        stats = client.breaker.statistics()
        assert (stats.state, stats.half_open_permits_in_use, stats.calls) == (
            seawall.BreakerState.HALF_OPEN,
            0,
            0,
        )
        # The permit is back: a new probe is admitted, and it closes the breaker.
        response = await client.get("/ok")
        assert response.status_code == 200
        assert client.breaker.state is seawall.BreakerState.CLOSED
    assert upstream.count("/ok") == 1


async def test_cancellation_is_neutral_for_the_breaker(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/hang", Fault.hang())
    breaker = seawall.CircuitBreaker(minimum_calls=100, window_size=100)
    async with make_client("svc", policy=policy(breaker=breaker), base_url=upstream.url) as client:
        for _ in range(3):
            with anyio.move_on_after(0.05):
                await client.get("/hang")
        stats = client.breaker.statistics()
    assert (stats.calls, stats.failures) == (0, 0)


# -- rejections ---------------------------------------------------------------------


async def test_full_bulkhead_fails_fast_and_sends_nothing(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory, until: Until
) -> None:
    upstream.route("/hang", Fault.hang())
    p = policy(bulkhead=seawall.Bulkhead(max_concurrent=2), timeouts=seawall.Timeouts(read=5))
    async with make_client("svc", policy=p, base_url=upstream.url) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hang")
            tg.start_soon(client.get, "/hang")
            await until(lambda: upstream.count("/hang") == 2)  # type: ignore[operator]
            assert client.bulkhead.statistics().in_use == 2
            with anyio.fail_after(0.5), pytest.raises(seawall.BulkheadFullError) as info:
                await client.post("/charge", content=b"x")
            tg.cancel_scope.cancel()
        assert client.bulkhead.statistics().in_use == 0
    assert upstream.count("/charge") == 0
    report = info.value.report
    assert report is not None
    assert (report.outcome, report.attempts, report.dependency) == ("bulkhead_full", 0, "svc")
    assert seawall.report_of(info.value) is report


async def test_bulkhead_max_wait_gets_the_slot_when_it_frees(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory, until: Until
) -> None:
    upstream.route("/slow", Fault.latency(0.15))
    p = policy(bulkhead=seawall.Bulkhead(max_concurrent=1, max_wait=2.0))
    async with (
        make_client("svc", policy=p, base_url=upstream.url) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.get, "/slow")
        await until(lambda: upstream.count("/slow") == 1)  # type: ignore[operator]
        response = await client.get("/after")
    assert response.status_code == 200
    assert seawall.report_of(response).bulkhead_wait > 0  # type: ignore[union-attr]


async def test_open_breaker_fails_fast_with_retry_after_and_sends_nothing(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503))
    breaker = seawall.CircuitBreaker(minimum_calls=2, window_size=2, open_duration=30)
    async with make_client(
        "svc", policy=policy(retry=None, breaker=breaker), base_url=upstream.url, clock=clock
    ) as client:
        await client.get("/x")
        await client.get("/x")
        assert upstream.count() == 2
        clock.advance(5)
        with pytest.raises(seawall.CircuitOpenError) as info:
            await client.post("/x", content=b"x")
        assert upstream.count() == 2
        assert info.value.retry_after == pytest.approx(25.0)
        report = info.value.report
        assert report is not None
        assert (report.outcome, report.attempts, report.breaker_state) == (
            "circuit_open",
            0,
            "open",
        )
        # After the open time a probe goes through.
        clock.advance(25)
        upstream.route("/x")
        assert (await client.get("/x")).status_code == 200
    assert upstream.count() == 3


async def test_open_breaker_stops_retries_with_the_last_response(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503))
    breaker = seawall.CircuitBreaker(minimum_calls=2, window_size=2, open_duration=30)
    async with make_client(
        "svc", policy=policy(attempts=5, breaker=breaker), base_url=upstream.url, clock=clock
    ) as client:
        response = await client.get("/x")
    # Two 503s open the breaker; the third attempt is refused, the last 503 answers.
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped, report.breaker_state) == (
        2,
        "circuit_open",
        "open",
    )
    assert upstream.count("/x") == 2


async def test_rate_limit_fails_fast_with_retry_after(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    p = policy(rate_limit=seawall.RateLimit(rate=2, per=1.0))
    async with make_client("svc", policy=p, base_url=upstream.url, clock=clock) as client:
        await client.get("/x")
        await client.get("/x")
        with pytest.raises(seawall.RateLimitedError) as info:
            await client.get("/x")
        assert info.value.retry_after == pytest.approx(0.5)
        assert info.value.report is not None
        assert info.value.report.outcome == "rate_limited"
        clock.advance(0.5)
        assert (await client.get("/x")).status_code == 200
    assert upstream.count("/x") == 3
