"""End to end: FastAPI on a real uvicorn, seawall to a real upstream, spans over real OTLP/HTTP.

What a collector (Jaeger) would receive is decoded from the protobuf the SDK's
OTLP exporter posts to a receiver on loopback; metrics are read from the
Prometheus exporter's text, as Prometheus would scrape them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from telemetry_support import OtlpReceiver, attributes, parse_traceparent, policy

import seawall
import seawall.telemetry
from seawall.testing._upstream import Fault, FaultyUpstream

#: The trace of the (imaginary) caller of the shop, sent in the request's traceparent.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class ServerThread:
    """uvicorn serving *app* on loopback, in a thread."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn died on startup"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()


@asynccontextmanager
async def _closing(client: seawall.ResilientClient) -> AsyncIterator[None]:
    async with client:
        yield


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def test_a_retried_call_reaches_the_collector_as_one_trace_under_the_server_span(
    receiver: OtlpReceiver,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.port}/v1/traces"),
            schedule_delay_millis=60_000,  # exported by force_flush() below, not by a timer
        )
    )
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    seawall.telemetry.configure(tracer_provider=provider, meter_provider=meter_provider)

    with FaultyUpstream() as upstream:
        upstream.route("/price", Fault.error(503), Fault.ok())
        client = seawall.ResilientClient(
            "pricing",
            policy=policy(breaker=seawall.CircuitBreaker(), bulkhead=seawall.Bulkhead()),
            base_url=upstream.url,
        )
        app = FastAPI(lifespan=lambda app: _closing(client))

        @app.get("/quote")
        async def quote() -> dict[str, Any]:
            answer = await client.get("/price")
            return {"price": answer.json(), "status": answer.status_code}

        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
        try:
            with ServerThread(app) as server:
                response = httpx.get(
                    f"{server.url}/quote",
                    headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
                )
                assert response.status_code == 200
                assert response.json()["status"] == 200
                metrics_text = generate_latest(registry).decode()
            assert provider.force_flush(5_000)
            sent = upstream.requests("/price")
        finally:
            provider.shutdown()
            meter_provider.shutdown()

    assert receiver.paths
    assert set(receiver.paths) == {"/v1/traces"}
    assert set(receiver.content_types) == {"application/x-protobuf"}
    received = receiver.spans()
    assert {r["service.name"] for r, _, _ in received} == {"shop"}
    by_id = {s.span_id: (scope, s) for _, scope, s in received}
    assert {s.trace_id.hex() for _, _, s in received} == {CALLER_TRACE}

    # The server span: a child of the caller's span.
    (server,) = [s for _, _, s in received if s.kind == Span.SPAN_KIND_SERVER]
    assert server.name == "GET /quote"
    assert server.parent_span_id.hex() == CALLER_SPAN

    # The call span: seawall's, under the server span.
    (call,) = [
        s for _, scope, s in received if scope == "seawall" and s.kind == Span.SPAN_KIND_INTERNAL
    ]
    assert call.name == "seawall pricing GET"
    assert call.parent_span_id == server.span_id
    call_attrs = attributes(call.attributes)
    assert call_attrs["seawall.dependency"] == "pricing"
    assert call_attrs["seawall.endpoint"] == upstream.url.rstrip("/")
    assert call_attrs["seawall.outcome"] == "success"
    assert call_attrs["seawall.attempts"] == 2
    assert call_attrs["seawall.retry.reasons"] == ["status_503"]
    assert call_attrs["seawall.breaker.state"] == "closed"
    assert call_attrs["seawall.breaker.state_before"] == "closed"
    assert call_attrs["seawall.bulkhead.wait"] == 0.0
    assert call_attrs["seawall.timeout.total"] == 30.0
    assert call_attrs["seawall.deadline.remaining"] == 30.0
    assert call_attrs["http.response.status_code"] == 200
    assert "error.type" not in call_attrs
    assert [e.name for e in call.events] == ["seawall.retry"]
    assert attributes(call.events[0].attributes)["seawall.retry.reason"] == "status_503"

    # Two attempt spans under the call span; the resent one says so.
    attempts = sorted(
        (s for _, _, s in received if s.parent_span_id == call.span_id),
        key=lambda s: s.start_time_unix_nano,
    )
    assert [(by_id[s.span_id][0], s.kind, s.name) for s in attempts] == [
        ("seawall", Span.SPAN_KIND_CLIENT, "GET"),
        ("seawall", Span.SPAN_KIND_CLIENT, "GET"),
    ]
    first, second = (attributes(s.attributes) for s in attempts)
    assert first["http.response.status_code"] == 503
    assert first["error.type"] == "503"
    assert "http.request.resend_count" not in first
    assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR
    assert second["http.request.resend_count"] == 1
    assert second["http.response.status_code"] == 200
    assert "error.type" not in second
    for attrs in (first, second):
        assert attrs["url.full"] == f"{upstream.url.rstrip('/')}/price"
        assert attrs["server.address"] == "127.0.0.1"
    # Each attempt went out with its own span as the parent of the upstream's work.
    assert [parse_traceparent(r.header("traceparent")) for r in sent] == [
        (CALLER_TRACE, s.span_id.hex()) for s in attempts
    ]

    # Metrics, as Prometheus scrapes them.
    samples = {
        (s.name, s.labels.get("seawall_outcome"), s.labels.get("seawall_reason")): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.labels.get("seawall_dependency") == "pricing"
    }
    assert samples[("seawall_calls_total", "success", None)] == 1
    assert samples[("seawall_retries_total", None, "status_503")] == 1
    assert samples[("seawall_call_duration_seconds_count", "success", None)] == 1
    assert samples[("http_client_request_duration_seconds_count", "http_error", None)] == 1
    assert samples[("http_client_request_duration_seconds_count", "success", None)] == 1
    assert samples[("seawall_breaker_state", None, None)] == 0
    assert samples[("seawall_bulkhead_limit", None, None)] == 25
