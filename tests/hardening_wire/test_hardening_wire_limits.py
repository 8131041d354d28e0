"""Bounded labels and finite waits (issue 12, items 11 and 15): custom methods
give one ``_OTHER`` series, a breaker's open time and a parsed ``Retry-After``
are always finite, and the ASGI error mapper can always write them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hardening_wire_support import unique
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import seawall
from seawall._breaker import MAX_OPEN_DURATION
from seawall._retry import MAX_RETRY_AFTER, parse_retry_after
from seawall.asgi import ResilienceMiddleware
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

ONE_ATTEMPT = seawall.Retry(attempts=1)


async def test_fifty_custom_methods_make_one_metric_series(
    spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    async with seawall.ResilientClient(
        dep, base_url=upstream.url, policy=seawall.Policy(retry=ONE_ATTEMPT)
    ) as client:
        for i in range(50):
            assert (await client.request(f"CUSTOM{i}", "/p")).status_code == 200
        assert (await client.get("/p")).status_code == 200
    assert upstream.count("/p") == 51

    data = metric_reader.get_metrics_data()
    assert data is not None
    series = {
        p.attributes["http.request.method"]: p.count
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "http.client.request.duration"
        for p in metric.data.data_points
        if isinstance(p, HistogramDataPoint)
        and p.attributes
        and p.attributes["seawall.dependency"] == dep
    }
    assert series == {"_OTHER": 50, "GET": 1}

    finished = spans.get_finished_spans()
    assert len(finished) == 2 * 51  # a call span and an attempt span each
    assert {(s.attributes or {})["http.request.method"] for s in finished} == {"GET", "_OTHER"}
    # Spans keep the method that was sent, as the semantic conventions say.
    custom = [
        s for s in finished if (s.attributes or {}).get("http.request.method_original") == "CUSTOM7"
    ]
    assert sorted(s.name for s in custom) == ["HTTP", f"seawall {dep} HTTP"]
    assert all((s.attributes or {})["http.request.method"] == "_OTHER" for s in custom)
    get = [s for s in finished if s.name in ("GET", f"seawall {dep} GET")]
    assert len(get) == 2
    assert all("http.request.method_original" not in (s.attributes or {}) for s in get)


async def test_an_ever_growing_open_time_stays_finite_for_the_error_mapper(
    upstream: FaultyUpstream,
) -> None:
    # Open for 30 s, a million times longer at each opening in a row, no
    # max_open_duration; an operator force-closes it each time (which keeps
    # the count of openings in a row). Unbounded, the 53rd opening lasted
    # float("inf"), and the middleware crashed on math.ceil(inf) writing
    # Retry-After: a 500 instead of a 503.
    upstream.set_default(Fault.error(500))
    breaker_config = seawall.CircuitBreaker(
        minimum_calls=1, open_duration=30.0, open_duration_multiplier=1e6
    )
    policy = seawall.Policy(retry=ONE_ATTEMPT, breaker=breaker_config)
    async with seawall.ResilientClient(unique(), base_url=upstream.url, policy=policy) as client:
        breaker = client.breaker
        for _ in range(60):
            breaker.force_closed()
            assert (await client.get("/p")).status_code == 500  # opens again

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await client.get("/p")  # refused by the open breaker

        inbound = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ResilienceMiddleware(app)), base_url="http://test"
        )
        async with inbound:
            response = await inbound.get("/")

    assert response.status_code == 503
    assert response.json()["reason"] == "circuit_open"
    retry_after = int(response.headers["retry-after"])
    assert MAX_OPEN_DURATION - 60 < retry_after <= MAX_OPEN_DURATION
    stats = breaker.statistics()
    assert stats.consecutive_openings == 60
    assert stats.retry_after is not None
    assert MAX_OPEN_DURATION - 60 < stats.retry_after <= MAX_OPEN_DURATION


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("9" * 400, MAX_RETRY_AFTER, id="400-digits"),
        pytest.param("1" + "0" * 12, MAX_RETRY_AFTER, id="past-the-maximum"),
        pytest.param("1000000000", 1e9, id="the-maximum"),
        pytest.param("120", 120.0, id="plain"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER, id="a-date-far-ahead"),
    ],
)
def test_a_parsed_retry_after_is_always_finite(value: str, expected: float) -> None:
    assert parse_retry_after(value, now_wall=0.0) == expected


async def test_a_400_digit_retry_after_from_upstream_stops_the_retries(
    upstream: FaultyUpstream,
) -> None:
    # Held before and after the cap: the server asked for longer than
    # max_retry_after, so seawall answers its 503 rather than wait or retry early.
    upstream.route("/p", Fault.error(503, retry_after="9" * 400), Fault.ok())
    policy = seawall.Policy(
        retry=seawall.Retry(attempts=3, backoff=seawall.Backoff(initial=0.0, jitter=False))
    )
    async with seawall.ResilientClient(unique(), base_url=upstream.url, policy=policy) as client:
        response = await client.get("/p")
    assert response.status_code == 503
    report = seawall.report_of(response)
    assert report is not None
    assert (report.attempts, report.retry_stopped) == (1, "retry_after_too_long")
    assert upstream.count("/p") == 1
