"""With opentelemetry-instrumentation-httpx on: no duplicate attempt span, one trace."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport, HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_support import (
    call_span,
    children,
    client_spans,
    parse_traceparent,
    policy,
    traceparent_of,
    unique,
)

import seawall
import seawall.telemetry
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

INSTRUMENTATION = "opentelemetry.instrumentation.httpx"


@pytest.fixture
def instrumented(tracer_provider: TracerProvider) -> Iterator[None]:
    """httpx instrumented globally (AsyncHTTPTransport.handle_async_request wrapped)."""
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.mark.usefixtures("instrumented")
async def test_auto_leaves_attempt_spans_to_the_instrumentation_under_the_call_span(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/items", Fault.error(503), Fault.ok())
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        assert (await client.get("/items")).status_code == 200

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    assert client_spans(finished, "seawall") == []  # no duplicate
    theirs = client_spans(finished, INSTRUMENTATION)
    assert len(theirs) == 2
    assert children(finished, call) == theirs
    # The instrumentation speaks the old or the new HTTP conventions (OTEL_SEMCONV_STABILITY_OPT_IN).
    statuses = [
        s.attributes.get("http.response.status_code", s.attributes.get("http.status_code"))
        for s in theirs
        if s.attributes
    ]
    assert statuses == [503, 200]
    # The wire carries the instrumentation's span ids, in the call's trace.
    received = [parse_traceparent(r.header("traceparent")) for r in upstream.requests("/items")]
    assert received == [traceparent_of(s) for s in theirs]
    assert {trace_id for trace_id, _ in received} == {format(call.context.trace_id, "032x")}
    assert call.attributes is not None
    assert call.attributes["seawall.attempts"] == 2


@pytest.mark.usefixtures("instrumented")
async def test_on_adds_seawall_attempt_spans_beside_the_instrumentation(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    seawall.telemetry.configure(attempt_spans="on")
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/x")

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    ours = client_spans(finished, "seawall")
    theirs = client_spans(finished, INSTRUMENTATION)
    assert len(ours) == len(theirs) == 1
    assert set(children(finished, call)) == {ours[0], theirs[0]}


@pytest.mark.usefixtures("instrumented")
async def test_off_leaves_only_the_instrumentation_spans(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    seawall.telemetry.configure(attempt_spans="off")
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/x")

    finished = spans.get_finished_spans()
    assert client_spans(finished, "seawall") == []
    assert children(finished, call_span(finished, dep)) == client_spans(finished, INSTRUMENTATION)


async def test_auto_makes_attempt_spans_again_once_uninstrumented(
    spans: InMemorySpanExporter, tracer_provider: TracerProvider, upstream: FaultyUpstream
) -> None:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    instrumentor.uninstrument()
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/x")

    finished = spans.get_finished_spans()
    assert client_spans(finished, INSTRUMENTATION) == []
    ours = client_spans(finished, "seawall")
    assert len(ours) == 1
    assert children(finished, call_span(finished, dep)) == ours


async def test_instrument_client_wraps_the_resilient_transport_above_the_call_span(
    spans: InMemorySpanExporter, tracer_provider: TracerProvider, upstream: FaultyUpstream
) -> None:
    """The documented caveat: instrument_client() spans the whole logical call."""
    dep = unique()
    upstream.route("/items", Fault.error(503), Fault.ok())
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
        try:
            await client.get("/items")
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)

    finished = spans.get_finished_spans()
    call = call_span(finished, dep)
    (outer,) = client_spans(finished, INSTRUMENTATION)
    assert call.parent is not None
    assert call.parent.span_id == outer.context.span_id
    # The inner transport is not instrumented: seawall still spans each attempt.
    ours = client_spans(finished, "seawall")
    assert len(ours) == 2
    assert children(finished, call) == ours


async def test_an_inner_async_opentelemetry_transport_is_detected_too(
    spans: InMemorySpanExporter, tracer_provider: TracerProvider, upstream: FaultyUpstream
) -> None:
    dep = unique()
    inner = AsyncOpenTelemetryTransport(httpx.AsyncHTTPTransport(), tracer_provider=tracer_provider)
    async with seawall.ResilientClient(
        dep, policy=policy(), base_url=upstream.url, transport=inner
    ) as client:
        await client.get("/x")

    finished = spans.get_finished_spans()
    assert client_spans(finished, "seawall") == []
    theirs = client_spans(finished, INSTRUMENTATION)
    assert len(theirs) == 1
    assert children(finished, call_span(finished, dep)) == theirs
