"""Spans: one INTERNAL span per logical call, one CLIENT span per physical attempt."""

from __future__ import annotations

import anyio
import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from telemetry_support import (
    REJECTIONS,
    call_span,
    call_spans,
    children,
    client_spans,
    origin,
    parse_traceparent,
    policy,
    rejecting_client,
    rejection_error,
    traceparent_of,
    unique,
)

import seawall
import seawall.telemetry
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

TIMEOUTS = seawall.Timeouts(connect=1.0, read=2.0, write=3.0, pool=4.0, attempt=5.0, total=6.0)


async def test_a_retried_call_has_one_call_span_and_one_client_span_per_attempt(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique("catalog")
    upstream.route("/items", Fault.error(503), Fault.ok())
    async with seawall.ResilientClient(
        dep,
        policy=policy(
            timeouts=TIMEOUTS,
            breaker=seawall.CircuitBreaker(),
            bulkhead=seawall.Bulkhead(max_concurrent=4),
        ),
        base_url=upstream.url,
    ) as client:
        response = await client.get("/items", params={"page": "2"})
    assert response.status_code == 200

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    assert call.name == f"seawall {dep} GET"
    assert call.instrumentation_scope is not None
    assert call.instrumentation_scope.name == "seawall"
    assert call.status.status_code is StatusCode.UNSET
    attrs = dict(call.attributes or {})
    assert attrs == {
        "seawall.dependency": dep,
        "http.request.method": "GET",
        "seawall.endpoint": origin(upstream),
        "seawall.outcome": "success",
        "seawall.attempts": 2,
        "seawall.retry.reasons": ("status_503",),
        "seawall.breaker.state_before": "closed",
        "seawall.breaker.state": "closed",
        "seawall.bulkhead.wait": 0.0,
        "seawall.deadline.remaining": 6.0,
        "http.response.status_code": 200,
        "seawall.timeout.connect": 1.0,
        "seawall.timeout.read": 2.0,
        "seawall.timeout.write": 3.0,
        "seawall.timeout.pool": 4.0,
        "seawall.timeout.attempt": 5.0,
        "seawall.timeout.total": 6.0,
    }
    (retry,) = call.events
    assert retry.name == "seawall.retry"
    assert dict(retry.attributes or {}) == {
        "seawall.retry.reason": "status_503",
        "seawall.attempt": 1,
        "seawall.retry.delay": 0.0,
    }

    first, second = children(finished, call)
    assert client_spans(finished) == [first, second]
    port = int(origin(upstream).rsplit(":", 1)[1])
    for span in (first, second):
        assert span.name == "GET"
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == port
        assert span.attributes["url.full"] == f"{origin(upstream)}/items?page=2"
        # Attempts happen inside the call.
        assert call.start_time <= span.start_time <= span.end_time <= call.end_time  # type: ignore[operator]
    assert first.attributes is not None
    assert second.attributes is not None
    assert "http.request.resend_count" not in first.attributes
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    assert second.status.status_code is StatusCode.UNSET


async def test_each_attempt_carries_the_traceparent_of_its_own_span(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/items", Fault.error(502), Fault.error(503), Fault.ok())
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/items")

    attempts = client_spans(spans.get_finished_spans())
    received = [parse_traceparent(r.header("traceparent")) for r in upstream.requests("/items")]
    assert len(received) == 3
    assert received == [traceparent_of(s) for s in attempts]
    assert attempts[2].attributes is not None
    assert attempts[2].attributes["http.request.resend_count"] == 2


async def test_a_failed_attempt_records_a_low_cardinality_error_type(
    spans: InMemorySpanExporter,
) -> None:
    dep = unique()
    url = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
    async with seawall.ResilientClient(dep, policy=policy(attempts=2), base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/down")

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    attempts = children(finished, call)
    assert len(attempts) == 2
    for span in attempts:
        assert span.attributes is not None
        assert span.attributes["error.type"] == "ConnectError"
        assert "http.response.status_code" not in span.attributes
        assert span.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["seawall.outcome"] == "retry_exhausted"
    assert call.attributes["error.type"] == "retry_exhausted"
    assert call.attributes["seawall.retry.reasons"] == ("connect_error",)
    assert call.status.status_code is StatusCode.ERROR
    assert [e.name for e in call.events] == ["seawall.retry", "exception"]
    exception = call.events[1].attributes
    assert exception is not None
    assert str(exception["exception.type"]).endswith("ConnectError")


@pytest.mark.parametrize("kind", REJECTIONS)
async def test_a_call_rejected_before_it_left_still_has_its_call_span(
    spans: InMemorySpanExporter, upstream: FaultyUpstream, kind: str
) -> None:
    dep = unique(kind)
    async with rejecting_client(kind, dep, upstream) as client:
        spans.clear()
        with pytest.raises(rejection_error(kind)):
            await client.get("/refused")
    assert upstream.count("/refused") == 0

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    assert children(finished, call) == []
    assert client_spans(finished) == []
    assert call.attributes is not None
    assert call.attributes["seawall.outcome"] == kind
    assert call.attributes["seawall.attempts"] == 0
    assert call.attributes["error.type"] == kind
    assert call.status.status_code is StatusCode.ERROR
    rejected = [e for e in call.events if e.name == "seawall.rejected"]
    assert len(rejected) == 1
    assert dict(rejected[0].attributes or {}) == {"seawall.reason": kind}
    if kind == "circuit_open":
        assert call.attributes["seawall.breaker.state"] == "forced_open"


async def test_a_breaker_transition_is_an_event_of_the_call_that_caused_it(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/flaky", Fault.error(500))
    breaker = seawall.CircuitBreaker(minimum_calls=2, window_size=2, open_duration=30.0)
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False, breaker=breaker), base_url=upstream.url
    ) as client:
        for _ in range(2):
            assert (await client.get("/flaky")).status_code == 500

    first, second = sorted(
        call_spans(spans.get_finished_spans(), dep), key=lambda s: s.start_time or 0
    )
    assert [e.name for e in first.events] == []
    (transition,) = second.events
    assert transition.name == "seawall.breaker.transition"
    assert dict(transition.attributes or {}) == {
        "seawall.dependency": dep,
        "seawall.breaker.from": "closed",
        "seawall.breaker.to": "open",
        "seawall.breaker.reason": "failure_rate",
    }
    assert second.attributes is not None
    assert second.attributes["seawall.breaker.state_before"] == "closed"
    assert second.attributes["seawall.breaker.state"] == "open"
    assert second.attributes["seawall.outcome"] == "http_error"
    assert second.attributes["error.type"] == "http_error"


async def test_a_half_open_transition_is_recorded_on_the_probe(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    clock = ManualClock()
    breaker = seawall.CircuitBreaker(
        minimum_calls=1, window_size=1, open_duration=10.0, half_open_calls=1
    )
    upstream.route("/p", Fault.error(500), Fault.ok())
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False, breaker=breaker), base_url=upstream.url, clock=clock
    ) as client:
        await client.get("/p")  # opens
        clock.advance(10.0)
        spans.clear()
        assert (await client.get("/p")).status_code == 200  # the probe closes it

    call = call_span(spans.get_finished_spans(), dep)
    moves = [
        (e.attributes["seawall.breaker.from"], e.attributes["seawall.breaker.to"])
        for e in call.events
        if e.name == "seawall.breaker.transition" and e.attributes is not None
    ]
    assert moves == [("open", "half_open"), ("half_open", "closed")]
    assert call.attributes is not None
    assert call.attributes["seawall.breaker.state_before"] == "half_open"
    assert call.attributes["seawall.breaker.state"] == "closed"


async def test_a_fallback_answer_keeps_the_failure_but_is_not_an_error_span(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/prices", Fault.error(503))
    fallback = seawall.Fallback(default=httpx.Response(200, json={"prices": []}))
    async with seawall.ResilientClient(
        dep, policy=policy(attempts=2, fallback=fallback), base_url=upstream.url
    ) as client:
        response = await client.get("/prices")
    assert response.json() == {"prices": []}

    call = call_span(spans.get_finished_spans(), dep)
    assert call.attributes is not None
    assert call.attributes["seawall.fallback"] == "default"
    assert call.attributes["seawall.outcome"] == "retry_exhausted"
    assert call.attributes["error.type"] == "retry_exhausted"
    assert call.status.status_code is StatusCode.UNSET
    assert "exception" not in [e.name for e in call.events]


async def test_the_ambient_deadline_caps_the_remaining_time_on_the_span(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    async with seawall.ResilientClient(
        dep, policy=policy(timeouts=TIMEOUTS), base_url=upstream.url
    ) as client:
        with seawall.deadline(0.5):
            await client.get("/x")

    call = call_span(spans.get_finished_spans(), dep)
    assert call.attributes is not None
    remaining = call.attributes["seawall.deadline.remaining"]
    assert isinstance(remaining, float)
    assert 0.0 < remaining <= 0.5
    assert call.attributes["seawall.timeout.total"] == 6.0


async def test_a_cancelled_call_ends_its_spans_and_says_so(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/hang", Fault.hang())
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        with anyio.move_on_after(0.1) as scope:
            await client.get("/hang")
    assert scope.cancelled_caught

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    assert call.attributes is not None
    assert call.attributes["seawall.outcome"] == "cancelled"
    assert call.status.status_code is StatusCode.UNSET
    (attempt,) = children(finished, call)
    assert attempt.end_time is not None


async def test_attempt_spans_off_keeps_the_call_span_and_propagates_it(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    seawall.telemetry.configure(attempt_spans="off")
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/x")

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    assert client_spans(finished) == []
    (request,) = upstream.requests("/x")
    assert parse_traceparent(request.header("traceparent")) == traceparent_of(call)


async def test_the_call_span_nests_under_the_server_span_of_an_instrumented_asgi_app(
    spans: InMemorySpanExporter, tracer_provider: TracerProvider, upstream: FaultyUpstream
) -> None:
    dep = unique("pricing")
    client = seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url)

    async def quote(request: Request) -> JSONResponse:
        answer = await client.get("/price")
        return JSONResponse({"upstream": answer.status_code})

    app = OpenTelemetryMiddleware(
        Starlette(routes=[Route("/quote", quote)]), tracer_provider=tracer_provider
    )
    async with (
        client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop") as http,
    ):
        assert (await http.get("/quote")).json() == {"upstream": 200}

    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind is SpanKind.SERVER]
    call = call_span(finished, dep)
    assert call.parent is not None
    assert call.parent.span_id == server.context.span_id
    assert call.context.trace_id == server.context.trace_id
    (attempt,) = children(finished, call)
    (request,) = upstream.requests("/price")
    assert parse_traceparent(request.header("traceparent")) == traceparent_of(attempt)
