"""Redundant endpoints: a breaker each, failover on retries, shared bulkhead and rate limit."""

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

# Breakers that never trip on their own in these tests; the tests open them by hand.
QUIET = seawall.CircuitBreaker(minimum_calls=100, window_size=100)


def _endpoint(response_or_error: object) -> str | None:
    report = seawall.report_of(response_or_error)
    assert report is not None
    return report.endpoint


async def test_each_endpoint_has_its_own_breaker_and_the_first_answers(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    endpoints = [upstream.url, upstream_b.url]
    async with make_client(
        "geo", policy=policy(breaker=QUIET), endpoints=endpoints, clock=clock
    ) as client:
        assert list(client.breakers) == endpoints
        a, b = client.breakers.values()
        assert a is not b
        assert (a.endpoint, b.endpoint) == (upstream.url, upstream_b.url)
        responses = [await client.get("/lookup") for _ in range(3)]
    assert all(_endpoint(r) == upstream.url for r in responses)
    assert (upstream.count("/lookup"), upstream_b.count("/lookup")) == (3, 0)
    assert a.statistics().calls == 3
    assert b.statistics().calls == 0


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.error(503), id="503"),
        pytest.param(Fault.error(500), id="500"),
        pytest.param(Fault.hang(), id="read-timeout"),
        pytest.param(Fault.reset_connection(), id="reset"),
    ],
)
@pytest.mark.parametrize("with_breakers", [True, False], ids=["breakers", "no-breaker"])
async def test_get_retry_fails_over_to_the_next_endpoint(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    fault: Fault,
    with_breakers: bool,
) -> None:
    upstream.route("/lookup", fault)
    upstream_b.route("/lookup", Fault(body=b"from b"))
    p = policy(
        attempts=2,
        breaker=QUIET if with_breakers else None,
        timeouts=seawall.Timeouts(read=0.05, attempt=None),
    )
    async with make_client("geo", policy=p, endpoints=[upstream.url, upstream_b.url]) as client:
        response = await client.get("/lookup", params={"q": "x"})
    assert response.content == b"from b"
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.endpoint) == (2, upstream_b.url)
    assert (upstream.count("/lookup"), upstream_b.count("/lookup")) == (1, 1)
    moved = upstream_b.requests("/lookup")[0]
    assert moved.target == "/lookup?q=x"
    assert moved.header("host") == upstream_b.url.removeprefix("http://")


async def test_retries_alternate_between_endpoints(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    upstream.route("/x", Fault.error(503))
    upstream_b.route("/x", Fault.error(503))
    async with make_client(
        "geo", policy=policy(attempts=5, breaker=QUIET), endpoints=[upstream.url, upstream_b.url]
    ) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert seawall.report_of(response).attempts == 5  # type: ignore[union-attr]
    assert (upstream.count("/x"), upstream_b.count("/x")) == (3, 2)


async def test_endpoint_path_prefix_is_kept_on_failover(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    upstream.route("/v1/items", Fault.error(502))
    endpoints = [upstream.url + "/v1", upstream_b.url + "/v1"]
    async with make_client("geo", policy=policy(attempts=2), endpoints=endpoints) as client:
        response = await client.get("items")
    assert response.status_code == 200
    assert [r.path for r in upstream_b.requests()] == ["/v1/items"]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.error(503), id="503"),
        pytest.param(Fault.reset_connection(), id="reset"),
        pytest.param(Fault.hang(), id="read-timeout"),
    ],
)
async def test_post_without_key_does_not_fail_over_once_sent(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    fault: Fault,
) -> None:
    upstream.route("/charge", fault)
    p = policy(attempts=3, breaker=QUIET, timeouts=seawall.Timeouts(read=0.05))
    async with make_client("pay", policy=p, endpoints=[upstream.url, upstream_b.url]) as client:
        if fault.status == 503:
            response = await client.post("/charge", content=b"1")
            assert response.status_code == 503
            assert seawall.report_of(response).retry_stopped == "not_idempotent"  # type: ignore[union-attr]
        else:
            with pytest.raises(seawall.OutcomeUnknownError):
                await client.post("/charge", content=b"1")
    assert (upstream.count(), upstream_b.count()) == (1, 0)


async def test_post_with_key_fails_over_after_being_sent(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    upstream.route("/charge", Fault.error(503))
    async with make_client(
        "pay", policy=policy(breaker=QUIET), endpoints=[upstream.url, upstream_b.url]
    ) as client:
        response = await client.post("/charge", content=b"1", idempotency_key="k-1")
    assert response.status_code == 200
    assert upstream.count(idempotency_key="k-1") == 1
    assert upstream_b.count(idempotency_key="k-1") == 1
    assert upstream_b.requests()[0].body == b"1"


async def test_post_fails_over_past_an_open_breaker_at_no_attempt_cost(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    async with make_client(
        "pay",
        policy=policy(retry=None, breaker=QUIET),
        endpoints=[upstream.url, upstream_b.url],
        clock=clock,
    ) as client:
        client.breakers[upstream.url].force_open()
        response = await client.post("/charge", content=b"1")
    assert response.status_code == 200
    report = seawall.report_of(response)
    assert report is not None
    # One attempt in all, even with retries off: skipping the open endpoint was free.
    assert (report.attempts, report.retries, report.endpoint) == (1, (), upstream_b.url)
    assert (upstream.count(), upstream_b.count()) == (0, 1)


async def test_retries_skip_an_open_endpoint_without_spending_attempts(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    upstream_b.route("/x", Fault.error(503))
    async with make_client(
        "geo",
        policy=policy(attempts=3, breaker=QUIET),
        endpoints=[upstream.url, upstream_b.url],
        clock=clock,
    ) as client:
        client.breakers[upstream.url].force_open()
        response = await client.get("/x")
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.endpoint, report.outcome) == (
        3,
        upstream_b.url,
        "retry_exhausted",
    )
    assert (upstream.count(), upstream_b.count("/x")) == (0, 3)


async def test_post_fails_over_past_a_connect_failure_which_costs_an_attempt(
    refused_url: str,
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    async with make_client(
        "pay", policy=policy(attempts=2, breaker=QUIET), endpoints=[refused_url, upstream.url]
    ) as client:
        response = await client.post("/charge", content=b"1")
        refused_stats = client.breakers[refused_url].statistics()
    assert response.status_code == 200
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retries, report.endpoint) == (
        2,
        ("connect_error",),
        upstream.url,
    )
    assert upstream.count("/charge") == 1
    assert (refused_stats.calls, refused_stats.failures) == (1, 1)


async def test_connect_failure_without_retries_left_is_raised(
    refused_url: str,
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    async with make_client(
        "pay", policy=policy(retry=None, breaker=QUIET), endpoints=[refused_url, upstream.url]
    ) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.post("/charge")
    assert _endpoint(info.value) == refused_url
    assert upstream.count() == 0


async def test_failing_endpoint_opens_its_own_breaker_only(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    upstream.route("/x", Fault.error(500))
    breaker = seawall.CircuitBreaker(minimum_calls=2, window_size=2, open_duration=30)
    async with make_client(
        "geo",
        policy=policy(retry=None, breaker=breaker),
        endpoints=[upstream.url, upstream_b.url],
        clock=clock,
    ) as client:
        assert (await client.get("/x")).status_code == 500
        assert (await client.get("/x")).status_code == 500
        a, b = (client.breakers[u] for u in (upstream.url, upstream_b.url))
        assert (a.state, b.state) == (seawall.BreakerState.OPEN, seawall.BreakerState.CLOSED)
        served = await client.get("/x")
        assert (served.status_code, _endpoint(served)) == (200, upstream_b.url)
        assert seawall.report_of(served).breaker_state == "closed"  # type: ignore[union-attr]
        # Once a's open time is over, it gets the calls again.
        clock.advance(30)
        upstream.route("/x")
        again = await client.get("/x")
        assert _endpoint(again) == upstream.url
    assert (upstream.count("/x"), upstream_b.count("/x")) == (3, 1)


async def test_all_endpoints_open_fails_fast_with_nothing_sent(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    async with make_client(
        "geo", policy=policy(breaker=QUIET), endpoints=[upstream.url, upstream_b.url], clock=clock
    ) as client:
        for breaker in client.breakers.values():
            breaker.force_open()
        with pytest.raises(seawall.CircuitOpenError) as info:
            await client.get("/x")
    assert info.value.report is not None
    assert (info.value.report.attempts, info.value.report.outcome) == (0, "circuit_open")
    assert (upstream.count(), upstream_b.count()) == (0, 0)


async def test_resilient_transport_with_endpoints_under_a_plain_client(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream, policy: PolicyFactory
) -> None:
    upstream.route("/x", Fault.error(503))
    transport = seawall.ResilientTransport(
        "geo", policy(attempts=2, breaker=QUIET), endpoints=[upstream.url, upstream_b.url]
    )
    async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert _endpoint(response) == upstream_b.url


async def test_rate_limit_covers_all_endpoints(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    clock: ManualClock,
) -> None:
    async with make_client(
        "geo",
        policy=policy(breaker=QUIET, rate_limit=seawall.RateLimit(rate=2, per=60)),
        endpoints=[upstream.url, upstream_b.url],
        clock=clock,
    ) as client:
        client.breakers[upstream.url].force_open()  # every call goes to b
        await client.get("/x")
        client.breakers[upstream.url].reset()  # and now to a
        await client.get("/x")
        with pytest.raises(seawall.RateLimitedError) as info:
            await client.get("/x")
    assert info.value.retry_after == pytest.approx(30.0)
    assert (upstream.count(), upstream_b.count()) == (1, 1)


async def test_bulkhead_covers_all_endpoints(
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    until: Callable[..., object],
) -> None:
    upstream.route("/slow", Fault.hang())
    async with (
        make_client(
            "geo",
            policy=policy(breaker=QUIET, bulkhead=seawall.Bulkhead(max_concurrent=1)),
            endpoints=[upstream.url, upstream_b.url],
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.get, "/slow")
        await until(lambda: upstream.count("/slow") == 1)  # type: ignore[operator]
        client.breakers[upstream.url].force_open()  # the next call would go to b...
        with pytest.raises(seawall.BulkheadFullError):
            await client.get("/x")  # ...but the one slot is taken
        tg.cancel_scope.cancel()
    assert upstream_b.count() == 0
