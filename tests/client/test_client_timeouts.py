"""Timeouts: httpx's phases, the attempt timeout, the total deadline and the ambient one."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]


async def test_policy_phases_map_to_httpx_timeouts(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    timeouts = seawall.Timeouts(
        connect=1.0, read=2.0, write=3.0, pool=4.0, attempt=None, total=None
    )
    async with make_client("t", policy=policy(timeouts=timeouts), base_url=upstream.url) as client:
        response = await client.get("/x")
        # A shorter per-request timeout wins over the policy's, phase by phase.
        shorter = await client.get("/x", timeout=httpx.Timeout(0.5, read=9.0))
    assert response.request.extensions["timeout"] == {
        "connect": 1.0,
        "read": 2.0,
        "write": 3.0,
        "pool": 4.0,
    }
    assert shorter.request.extensions["timeout"] == {
        "connect": 0.5,
        "read": 2.0,
        "write": 0.5,
        "pool": 0.5,
    }


async def test_total_caps_each_phase_by_the_time_left(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    timeouts = seawall.Timeouts(connect=5.0, read=10.0, write=10.0, pool=5.0, total=1.0)
    async with make_client("t", policy=policy(timeouts=timeouts), base_url=upstream.url) as client:
        response = await client.get("/x")
    phases = response.request.extensions["timeout"]
    assert set(phases) == {"connect", "read", "write", "pool"}
    # Capped just past the time left (the engine's deadline cut must fire first).
    assert all(0 < value <= 1.0 + 0.05 for value in phases.values())
    assert seawall.report_of(response).deadline_remaining == 1.0  # type: ignore[union-attr]


async def test_read_timeout_fires_from_the_policy(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/slow", Fault.latency(0.5))
    timeouts = seawall.Timeouts(read=0.05, attempt=None)
    async with make_client(
        "t", policy=policy(retry=None, timeouts=timeouts), base_url=upstream.url
    ) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get("/slow")
    assert time.monotonic() - started < 0.4
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts) == ("timeout", 1)


async def test_connect_timeout_fires_from_the_policy(
    policy: PolicyFactory, make_client: ClientFactory
) -> None:
    timeouts = seawall.Timeouts(connect=0.05)
    with FaultyUpstream.unaccepted_listener() as port:
        async with make_client(
            "t", policy=policy(attempts=2, timeouts=timeouts), base_url=f"http://127.0.0.1:{port}"
        ) as client:
            started = time.monotonic()
            # POST: a connect timeout means the request never left, so it is retried.
            with pytest.raises(httpx.ConnectTimeout) as info:
                await client.post("/x", content=b"x")
    assert time.monotonic() - started < 1.0
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "retry_exhausted",
        2,
        ("connect_timeout",),
    )


@pytest.mark.parametrize(
    ("attempt", "expect_timeout"),
    [
        pytest.param(None, False, id="no-attempt-limit-read-never-trips"),
        pytest.param(0.1, True, id="attempt-limit-cuts-the-body"),
    ],
)
async def test_attempt_timeout_covers_the_body_download(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    attempt: float | None,
    expect_timeout: bool,
    make_client: ClientFactory,
) -> None:
    # Headers at once, half the body, a 0.25 s stall (under the 1 s read
    # timeout), then the rest: only an end-to-end limit can catch it.
    upstream.route("/trickle", Fault.slow_body(0.25))
    timeouts = seawall.Timeouts(read=1.0, attempt=attempt)
    async with make_client(
        "t", policy=policy(attempts=2, timeouts=timeouts), base_url=upstream.url
    ) as client:
        started = time.monotonic()
        if not expect_timeout:
            response = await client.get("/trickle")
            assert response.json() == {"path": "/trickle", "n": 1}
            assert upstream.count("/trickle") == 1
            return
        with pytest.raises(TimeoutError) as info:
            await client.get("/trickle")
        inner = client.resilient_transport.inner
        assert isinstance(inner, httpx.AsyncHTTPTransport)
        assert inner._pool.connections == []  # each cut attempt closed its connection
    elapsed = time.monotonic() - started
    # Two attempts, each cut at 0.1 s: the cut counts as a timeout and GET is retried.
    assert 0.2 <= elapsed < 0.45
    assert upstream.count("/trickle") == 2
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "retry_exhausted",
        2,
        ("attempt_timeout",),
    )
    assert not isinstance(info.value, seawall.DeadlineExceededError)


async def test_attempt_timeout_then_success_on_retry(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/t", Fault(body=b"x" * 100, body_delay=0.3), Fault.ok())
    timeouts = seawall.Timeouts(read=1.0, attempt=0.1)
    async with make_client("t", policy=policy(timeouts=timeouts), base_url=upstream.url) as client:
        response = await client.get("/t")
    assert response.json() == {"path": "/t", "n": 2}
    assert seawall.report_of(response).retries == ("attempt_timeout",)  # type: ignore[union-attr]


async def test_total_bounds_every_attempt_and_raises_deadline_exceeded(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/h", Fault.hang())
    timeouts = seawall.Timeouts(read=5.0, attempt=0.1, total=0.35)
    async with make_client(
        "t", policy=policy(attempts=10, timeouts=timeouts), base_url=upstream.url
    ) as client:
        started = time.monotonic()
        with pytest.raises(seawall.DeadlineExceededError) as info:
            await client.get("/h")
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.6
    report = info.value.report
    assert report is not None
    assert report.outcome == "deadline_exceeded"
    # 0.1 + 0.1 + 0.1 cut by the attempt limit, the 4th by the deadline.
    assert report.attempts == 4
    assert report.retries == ("attempt_timeout",) * 3
    assert upstream.count("/h") == 4
    assert isinstance(info.value, TimeoutError)


async def test_total_cuts_a_single_long_read(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/h", Fault.hang())
    timeouts = seawall.Timeouts(read=5.0, attempt=None, total=0.15)
    async with make_client("t", policy=policy(timeouts=timeouts), base_url=upstream.url) as client:
        started = time.monotonic()
        with pytest.raises(seawall.DeadlineExceededError):
            await client.get("/h")
    assert time.monotonic() - started < 0.5
    assert upstream.count("/h") == 1


async def test_total_includes_backoff_and_stops_before_crossing_it(
    upstream: FaultyUpstream, make_client: ClientFactory
) -> None:
    upstream.route("/e", Fault.error(503))
    policy = seawall.Policy(
        breaker=None,
        timeouts=seawall.Timeouts(total=0.3),
        retry=seawall.Retry(
            attempts=5,
            budget=None,
            backoff=seawall.Backoff(initial=0.1, multiplier=2.0, jitter=False),
        ),
    )
    async with make_client("t", policy=policy, base_url=upstream.url) as client:
        started = time.monotonic()
        response = await client.get("/e")
    # 503, wait 0.1, 503, the next wait (0.2) would end past 0.3: stop with the 503.
    assert 0.1 <= time.monotonic() - started < 0.3
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped, report.outcome) == (
        2,
        "deadline",
        "retry_exhausted",
    )
    assert upstream.count("/e") == 2


async def test_backoff_crossing_the_deadline_on_manual_clock(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    upstream.route("/e", Fault.error(503))
    policy = seawall.Policy(
        breaker=None,
        timeouts=seawall.Timeouts(total=1.0),
        retry=seawall.Retry(budget=None, backoff=seawall.Backoff(initial=2.0, jitter=False)),
    )
    async with make_client("t", policy=policy, base_url=upstream.url, clock=clock) as client:
        response = await client.get("/e")
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped, report.outcome) == (1, "deadline", "http_error")
    assert clock.slept == []
    assert upstream.count("/e") == 1


async def test_transport_error_with_backoff_crossing_the_deadline_raises_it(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    upstream.route("/r", Fault.reset_connection())
    policy = seawall.Policy(
        breaker=None,
        timeouts=seawall.Timeouts(total=1.0),
        retry=seawall.Retry(budget=None, backoff=seawall.Backoff(initial=0.6, jitter=False)),
    )
    async with make_client("t", policy=policy, base_url=upstream.url, clock=clock) as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.get("/r")
    report = seawall.report_of(info.value)
    assert report is not None
    # 0.6 fits, the next 1.2 would not.
    assert clock.slept == [0.6]
    assert (report.attempts, report.retry_stopped) == (2, "deadline")
    assert upstream.count("/r") == 2


async def test_ambient_deadline_caps_the_call(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/h", Fault.hang())
    timeouts = seawall.Timeouts(read=5.0, attempt=None, total=30.0)
    async with make_client("t", policy=policy(timeouts=timeouts), base_url=upstream.url) as client:
        started = time.monotonic()
        with seawall.deadline(0.15), pytest.raises(seawall.DeadlineExceededError) as info:
            await client.get("/h")
        assert time.monotonic() - started < 0.5
        report = info.value.report
        assert report is not None
        assert report.deadline_remaining is not None
        assert 0 < report.deadline_remaining <= 0.15
        # Outside the block the policy's own total applies again.
        assert (await client.get("/fine")).status_code == 200


async def test_ambient_deadline_already_spent_sends_nothing(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    async with make_client("t", policy=policy(), base_url=upstream.url) as client:
        with seawall.deadline(0), pytest.raises(seawall.DeadlineExceededError) as info:
            await client.get("/x")
    assert upstream.count() == 0
    assert info.value.report is not None
    assert info.value.report.attempts == 0


async def test_ambient_deadline_on_a_manual_clock_stops_retry_after(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/e", Fault.error(503, retry_after=5), Fault.ok())
    async with make_client("t", policy=policy(), base_url=upstream.url, clock=clock) as client:
        with seawall.deadline(3.0, clock=clock):
            capped = await client.get("/e")
        upstream.route("/e", Fault.error(503, retry_after=5), Fault.ok())
        free = await client.get("/e")
    assert capped.status_code == 503
    assert seawall.report_of(capped).retry_stopped == "retry_after_too_long"  # type: ignore[union-attr]
    assert free.status_code == 200
    assert clock.slept == [5.0]
