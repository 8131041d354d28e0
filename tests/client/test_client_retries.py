"""Retries only where safe, proven by the server's request log."""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]

IDEMPOTENT = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
NOT_IDEMPOTENT = ["POST", "PATCH"]
# Faults after which the request may have reached the server.
SENT_FAULTS = [
    pytest.param(Fault.reset_connection(), id="reset"),
    pytest.param(Fault.hang(), id="read-timeout"),
    pytest.param(Fault.error(503), id="503"),
    pytest.param(Fault.error(500), id="500"),
    pytest.param(Fault.error(502), id="502"),
    pytest.param(Fault.error(504), id="504"),
    pytest.param(Fault.error(408), id="408"),
    pytest.param(Fault.truncated(), id="truncated-body"),
    pytest.param(Fault.garbage(), id="garbage"),
]
FAST_TIMEOUTS = seawall.Timeouts(read=0.05, attempt=None)


def _answered(fault: Fault) -> bool:
    """Whether the fault still answers with a (complete) status line and body."""
    return not (fault.reset or fault.blackhole or fault.truncate or fault.invalid)


@pytest.mark.parametrize("fault", SENT_FAULTS)
@pytest.mark.parametrize("method", NOT_IDEMPOTENT)
async def test_non_idempotent_request_without_key_is_never_sent_twice(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    method: str,
    fault: Fault,
    make_client: ClientFactory,
) -> None:
    upstream.route("/charge", fault, Fault.ok())
    async with make_client(
        "pay", policy=policy(attempts=5, timeouts=FAST_TIMEOUTS), base_url=upstream.url
    ) as client:
        if _answered(fault):
            response = await client.request(method, "/charge", json={"amount": 5})
            assert response.status_code == fault.status
            report = seawall.report_of(response)
            assert report is not None
            assert (report.retry_stopped, report.outcome) == ("not_idempotent", "http_error")
        else:
            with pytest.raises(seawall.OutcomeUnknownError) as info:
                await client.request(method, "/charge", json={"amount": 5})
            report = info.value.report
            assert report is not None
            assert report.outcome == "outcome_unknown"
    assert report.attempts == 1
    assert upstream.count("/charge") == 1


@pytest.mark.parametrize(
    ("method", "fault"),
    [
        pytest.param(method, *fault.values, id=f"{method}-{fault.id}")
        for method in IDEMPOTENT
        for fault in SENT_FAULTS
        # A HEAD response has no body to cut short.
        if not (method == "HEAD" and fault.id == "truncated-body")
    ],
)
async def test_idempotent_methods_are_retried_the_configured_number_of_times(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    method: str,
    fault: Fault,
    make_client: ClientFactory,
) -> None:
    upstream.route("/item", fault)  # fails forever
    async with make_client(
        "items", policy=policy(attempts=3, timeouts=FAST_TIMEOUTS), base_url=upstream.url
    ) as client:
        try:
            response = await client.request(method, "/item")
        except httpx.TransportError as exc:
            report = seawall.report_of(exc)
        else:
            assert response.status_code == fault.status
            report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.outcome, len(report.retries)) == (3, "retry_exhausted", 2)
    assert [r.method for r in upstream.requests("/item")] == [method] * 3


@pytest.mark.parametrize("fault", SENT_FAULTS)
async def test_post_with_idempotency_key_is_retried_with_the_same_key_and_body(
    upstream: FaultyUpstream, policy: PolicyFactory, fault: Fault, make_client: ClientFactory
) -> None:
    upstream.route("/orders", fault, fault, Fault(status=201))
    async with make_client(
        "orders", policy=policy(attempts=3, timeouts=FAST_TIMEOUTS), base_url=upstream.url
    ) as client:
        response = await client.post("/orders", json={"sku": 1}, idempotency_key="order-42")
    assert response.status_code == 201
    sent = upstream.requests("/orders")
    assert len(sent) == 3
    assert {(r.idempotency_key, r.body) for r in sent} == {("order-42", b'{"sku":1}')}
    assert upstream.count("/orders", idempotency_key="order-42") == 3


async def test_429_is_retried_even_for_post_without_key(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/send", Fault.error(429, retry_after=1), Fault.ok())
    async with make_client("mail", policy=policy(), base_url=upstream.url, clock=clock) as client:
        response = await client.post("/send", content=b"hello")
    assert response.status_code == 200
    assert upstream.count("/send") == 2
    assert clock.slept == [1.0]
    assert seawall.report_of(response).retries == ("status_429",)  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501], ids=str)
async def test_other_statuses_are_never_retried(
    upstream: FaultyUpstream, policy: PolicyFactory, status: int, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(status), Fault.ok())
    async with make_client("x", policy=policy(), base_url=upstream.url) as client:
        response = await client.get("/x")
    assert response.status_code == status
    report = seawall.report_of(response)
    assert report is not None
    assert (report.outcome, report.attempts, report.retry_stopped) == ("http_error", 1, None)
    assert upstream.count("/x") == 1


async def test_custom_retry_statuses(upstream: FaultyUpstream, make_client: ClientFactory) -> None:
    upstream.route("/x", Fault.error(409), Fault.error(503), Fault.ok())
    policy = seawall.Policy(
        breaker=None,
        retry=seawall.Retry(
            retry_statuses={409},
            budget=None,
            backoff=seawall.Backoff(initial=0, maximum=0),
        ),
    )
    async with make_client("x", policy=policy, base_url=upstream.url) as client:
        response = await client.get("/x")
    # 409 retried; 503 is no longer in the set, so it is the answer.
    assert response.status_code == 503
    assert upstream.count("/x") == 2


async def test_connect_failure_on_post_is_retried(
    refused_url: str, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    async with make_client("down", policy=policy(attempts=3), base_url=refused_url) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.post("/charge", content=b"x")
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "retry_exhausted",
        3,
        ("connect_error", "connect_error"),
    )


async def test_single_connect_failure_is_not_retry_exhausted(
    refused_url: str, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    async with make_client("down", policy=policy(retry=None), base_url=refused_url) as c:
        with pytest.raises(httpx.ConnectError) as info:
            await c.post("/charge")
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == ("connect_error", 1, ())


async def test_pool_timeout_on_post_is_retried_and_never_sent(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    until: Callable[..., object],
    make_client: ClientFactory,
) -> None:
    upstream.route("/hold", Fault.hang())
    p = policy(
        attempts=3,
        timeouts=seawall.Timeouts(pool=0.05, read=5.0),
        pool=seawall.Pool(max_connections=1, max_keepalive=1),
    )
    async with (
        make_client("pool", policy=p, base_url=upstream.url) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.get, "/hold")
        await until(lambda: upstream.count("/hold") == 1)  # type: ignore[operator]
        with pytest.raises(httpx.PoolTimeout) as info:
            await client.post("/charge", content=b"x")
        tg.cancel_scope.cancel()
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.attempts, report.retries) == (3, ("pool_timeout", "pool_timeout"))
    assert upstream.count("/charge") == 0


async def test_exhausted_retryable_status_returns_the_last_response(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(500), Fault.error(502), Fault.error(503))
    async with make_client("x", policy=policy(attempts=3), base_url=upstream.url) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert response.json() == {"path": "/x", "n": 3}
    report = seawall.report_of(response)
    assert report is not None
    assert report.outcome == "retry_exhausted"
    assert report.retries == ("status_500", "status_502")
    assert report.status_code == 503


async def test_exhausted_transport_error_raises_the_last_httpx_error(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.reset_connection(), Fault.reset_connection(), Fault.hang())
    async with make_client(
        "x", policy=policy(attempts=3, timeouts=FAST_TIMEOUTS), base_url=upstream.url
    ) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get("/x")
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.outcome == "retry_exhausted"
    assert report.retries == ("transport_error", "transport_error")


async def test_backoff_waits_follow_the_policy(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503), Fault.error(503), Fault.ok())
    policy = seawall.Policy(
        breaker=None,
        retry=seawall.Retry(
            attempts=4, budget=None, backoff=seawall.Backoff(initial=0.5, jitter=False)
        ),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.slept == [0.5, 1.0]


@pytest.mark.parametrize("status", [429, 503], ids=str)
async def test_retry_after_seconds_sets_the_wait(
    upstream: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    status: int,
    make_client: ClientFactory,
) -> None:
    upstream.route(
        "/x", Fault.error(status, retry_after=7), Fault.error(status, retry_after=3), Fault.ok()
    )
    async with make_client(
        "x", policy=policy(attempts=3), base_url=upstream.url, clock=clock
    ) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.slept == [7.0, 3.0]
    report = seawall.report_of(response)
    assert report is not None
    assert report.elapsed == 10.0  # on the client's clock
    assert report.retries == (f"status_{status}",) * 2


async def test_resilient_transport_takes_a_clock(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory
) -> None:
    upstream.route("/x", Fault.error(503, retry_after=4), Fault.ok())
    transport = seawall.ResilientTransport("x", policy(), clock=clock)
    async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.slept == [4.0]


async def test_retry_after_http_date_sets_the_wait(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=4)
    upstream.route(
        "/x", Fault.error(503, retry_after=email.utils.format_datetime(when, usegmt=True)), Fault()
    )
    async with make_client("x", policy=policy(), base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert len(clock.slept) == 1
    assert 2.5 <= clock.slept[0] <= 4.0  # the date has whole seconds


@pytest.mark.parametrize("value", ["soon", "1.5", "-3", ""], ids=repr)
async def test_unparseable_retry_after_falls_back_to_the_backoff(
    upstream: FaultyUpstream, clock: ManualClock, value: str, make_client: ClientFactory
) -> None:
    fault = Fault(status=503, headers={"Retry-After": value} if value else {})
    upstream.route("/x", fault, Fault.ok())
    policy = seawall.Policy(
        breaker=None,
        retry=seawall.Retry(budget=None, backoff=seawall.Backoff(initial=0.25, jitter=False)),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.slept == [0.25]


async def test_retry_after_past_date_retries_at_once(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), Fault())
    async with make_client("x", policy=policy(), base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.slept == [0.0]


@pytest.mark.parametrize(
    ("retry_after", "total"),
    [
        pytest.param(120, None, id="longer-than-max_retry_after"),
        pytest.param(20, 10.0, id="longer-than-the-deadline"),
    ],
)
async def test_retry_after_too_long_stops_at_once(
    upstream: FaultyUpstream,
    clock: ManualClock,
    retry_after: int,
    total: float | None,
    make_client: ClientFactory,
) -> None:
    upstream.route("/x", Fault.error(503, retry_after=retry_after), Fault.ok())
    policy = seawall.Policy(
        breaker=None,
        timeouts=seawall.Timeouts(total=total),
        retry=seawall.Retry(max_retry_after=60, budget=None),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(retry_after)
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped) == (1, "retry_after_too_long")
    assert clock.slept == []
    assert upstream.count("/x") == 1


async def test_retry_budget_exhausted_stops_retrying(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503), Fault.ok())
    policy = seawall.Policy(
        breaker=None,
        retry=seawall.Retry(
            budget=seawall.RetryBudget(ratio=0.0, min_per_second=0.0),
            backoff=seawall.Backoff(initial=0, maximum=0),
        ),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert seawall.report_of(response).retry_stopped == "budget_exhausted"  # type: ignore[union-attr]
    assert upstream.count("/x") == 1


async def _body() -> AsyncIterator[bytes]:
    yield b"part-1;"
    yield b"part-2"


async def test_streaming_request_body_is_not_retried_on_a_status(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/upload", Fault.error(503), Fault.ok())
    async with make_client("up", policy=policy(), base_url=upstream.url) as client:
        response = await client.put("/upload", content=_body(), idempotency_key="u-1")
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped) == (1, "unreplayable_body")
    assert [r.body for r in upstream.requests("/upload")] == [b"part-1;part-2"]


async def test_streaming_request_body_is_not_retried_on_a_transport_error(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/upload", Fault.reset_connection(), Fault.ok())
    async with make_client("up", policy=policy(), base_url=upstream.url) as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.put("/upload", content=_body())
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.attempts, report.retry_stopped) == (1, "unreplayable_body")
    assert upstream.count("/upload") == 1


async def test_retry_off_makes_one_attempt(
    upstream: FaultyUpstream, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(503), Fault.ok())
    async with make_client("x", policy=seawall.Policy(retry=None), base_url=upstream.url) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert upstream.count("/x") == 1


# -- breaker accounting ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "failed"),
    [
        pytest.param(Fault.ok(), False, id="200"),
        pytest.param(Fault.error(404), False, id="404"),
        pytest.param(Fault.error(429), False, id="429"),
        pytest.param(Fault.error(400), False, id="400"),
        pytest.param(Fault.error(500), True, id="500"),
        pytest.param(Fault.error(503), True, id="503"),
        pytest.param(Fault.error(501), True, id="501"),
        pytest.param(Fault.hang(), True, id="read-timeout"),
        pytest.param(Fault.reset_connection(), True, id="reset"),
        pytest.param(Fault.garbage(), True, id="protocol-error"),
    ],
)
async def test_breaker_counts_5xx_timeouts_and_transport_errors_as_failures(
    upstream: FaultyUpstream,
    clock: ManualClock,
    fault: Fault,
    failed: bool,
    make_client: ClientFactory,
) -> None:
    upstream.route("/x", fault)
    policy = seawall.Policy(
        retry=None,
        timeouts=FAST_TIMEOUTS,
        breaker=seawall.CircuitBreaker(minimum_calls=100, window_size=100),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        try:
            await client.get("/x")
        except httpx.TransportError:
            assert failed
        stats = client.breaker.statistics()
    assert (stats.calls, stats.failures) == (1, int(failed))


async def test_breaker_counts_each_attempt_and_a_connect_failure(
    refused_url: str, clock: ManualClock, make_client: ClientFactory
) -> None:
    policy = seawall.Policy(
        retry=seawall.Retry(attempts=3, budget=None, backoff=seawall.Backoff(initial=0)),
        breaker=seawall.CircuitBreaker(minimum_calls=100, window_size=100),
    )
    async with make_client("x", policy=policy, base_url=refused_url, clock=clock) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/x")
        stats = client.breaker.statistics()
    assert (stats.calls, stats.failures) == (3, 3)


async def test_breaker_opens_on_failures_and_the_report_says_so(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    upstream.route("/x", Fault.error(500))
    policy = seawall.Policy(
        retry=None,
        breaker=seawall.CircuitBreaker(minimum_calls=2, window_size=2, open_duration=30),
    )
    async with make_client("x", policy=policy, base_url=upstream.url, clock=clock) as client:
        first = await client.get("/x")
        second = await client.get("/x")
    assert seawall.report_of(first).breaker_state == "closed"  # type: ignore[union-attr]
    report = seawall.report_of(second)
    assert report is not None
    assert (report.breaker_state_before, report.breaker_state) == ("closed", "open")
