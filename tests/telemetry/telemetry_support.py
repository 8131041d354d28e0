"""Helpers shared by the telemetry tests: policies, span lookups, metric points."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, generate_latest

import seawall
import seawall.telemetry
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

#: Backoff that never waits: retries run back to back.
NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)

#: The Prometheus names the exporter gives seawall's instruments (counters get
#: ``_total``, a unit of seconds becomes ``_seconds``, ``{call}`` annotations go).
PROMETHEUS_NAMES = {
    "http.client.request.duration": "http_client_request_duration_seconds",
    "seawall.call.duration": "seawall_call_duration_seconds",
    "seawall.calls": "seawall_calls_total",
    "seawall.retries": "seawall_retries_total",
    "seawall.rejections": "seawall_rejections_total",
    "seawall.breaker.state": "seawall_breaker_state",
    "seawall.breaker.failure_rate": "seawall_breaker_failure_rate",
    "seawall.bulkhead.in_use": "seawall_bulkhead_in_use",
    "seawall.bulkhead.limit": "seawall_bulkhead_limit",
    "seawall.pool.connections": "seawall_pool_connections",
}


async def until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Wait (polling briefly) for a condition set by another thread."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.005)


def unique(prefix: str = "dep") -> str:
    """A dependency name no other test uses: gauges observe every live runtime."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def policy(
    *,
    attempts: int = 3,
    retry: bool = True,
    breaker: seawall.CircuitBreaker | None = None,
    **parts: Any,
) -> seawall.Policy:
    """A policy that retries without waiting, with no budget and (by default) no breaker."""
    return seawall.Policy(
        retry=seawall.Retry(attempts=attempts, backoff=NO_WAIT, budget=None) if retry else None,
        breaker=breaker,
        **parts,
    )


def origin(upstream: FaultyUpstream) -> str:
    return upstream.url.rstrip("/")


# -- spans ----------------------------------------------------------------------------


def call_spans(spans: Sequence[ReadableSpan], dependency: str) -> list[ReadableSpan]:
    """seawall's INTERNAL call spans of *dependency*."""
    return [
        s
        for s in spans
        if s.kind is SpanKind.INTERNAL
        and (s.attributes or {}).get("seawall.dependency") == dependency
    ]


def call_span(spans: Sequence[ReadableSpan], dependency: str) -> ReadableSpan:
    (span,) = call_spans(spans, dependency)
    return span


def children(spans: Iterable[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """Spans whose parent is *parent*, in start order."""
    found = [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and s.context.trace_id == parent.context.trace_id
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def client_spans(spans: Iterable[ReadableSpan], scope: str | None = None) -> list[ReadableSpan]:
    found = [
        s
        for s in spans
        if s.kind is SpanKind.CLIENT
        and (scope is None or (s.instrumentation_scope and s.instrumentation_scope.name == scope))
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def traceparent_of(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of a span, as the W3C header spells them."""
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parse_traceparent(value: str | None) -> tuple[str, str]:
    assert value is not None, "no traceparent header was sent"
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00"
    return trace_id, span_id


# -- metrics ----------------------------------------------------------------------------


def metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """Every metric of the ``seawall`` scope, by name, as collected now."""
    data = reader.get_metrics_data()
    found: dict[str, Metric] = {}
    if data is None:
        return found
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name == "seawall":
                for metric in sm.metrics:
                    found[metric.name] = metric
    return found


def points(collected: dict[str, Metric], name: str, **attributes: Any) -> list[Any]:
    """Data points of metric *name* whose attributes include *attributes* (dots as ``__``)."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    metric = collected.get(name)
    if metric is None:
        return []
    return [
        p
        for p in metric.data.data_points
        if all((p.attributes or {}).get(k) == v for k, v in wanted.items())
    ]


def value(collected: dict[str, Metric], name: str, **attributes: Any) -> float | None:
    """The single number point of *name* matching *attributes*, or None."""
    found = points(collected, name, **attributes)
    if not found:
        return None
    assert len(found) == 1, found
    point = found[0]
    assert isinstance(point, NumberDataPoint)
    return point.value


# -- rejected calls -----------------------------------------------------------------------

REJECTIONS = ["circuit_open", "bulkhead_full", "rate_limited"]


@contextlib.asynccontextmanager
async def rejecting_client(
    kind: str, dependency: str, upstream: FaultyUpstream
) -> AsyncIterator[seawall.ResilientClient]:
    """A client whose next call is refused before it leaves, for the reason *kind*."""
    clock = ManualClock()
    if kind == "circuit_open":
        client = seawall.ResilientClient(
            dependency,
            policy=policy(breaker=seawall.CircuitBreaker()),
            base_url=upstream.url,
            clock=clock,
        )
        client.breaker.force_open()
        async with client:
            yield client
    elif kind == "bulkhead_full":
        client = seawall.ResilientClient(
            dependency,
            policy=policy(bulkhead=seawall.Bulkhead(max_concurrent=1, max_wait=0.0)),
            base_url=upstream.url,
        )
        token = client.bulkhead.try_acquire()  # the only slot, taken
        assert token is not None
        async with client:
            yield client
        client.bulkhead.release(token)
    else:
        assert kind == "rate_limited"
        client = seawall.ResilientClient(
            dependency,
            policy=policy(rate_limit=seawall.RateLimit(rate=1, per=60.0, burst=1)),
            base_url=upstream.url,
            clock=clock,
        )
        async with client:
            # The only token goes to a first call, which is sent.
            assert (await client.get("/first")).status_code == 200
            yield client


def rejection_error(kind: str) -> type[seawall.RejectedError]:
    return {
        "circuit_open": seawall.CircuitOpenError,
        "bulkhead_full": seawall.BulkheadFullError,
        "rate_limited": seawall.RateLimitedError,
    }[kind]


async def prometheus_exposition(upstream: FaultyUpstream, dependency: str) -> str:
    """Prometheus text (``generate_latest``) after a retried success and a rejection.

    Every instrument of seawall has a sample for *dependency* in it: a retry, a
    success, a bulkhead rejection (its one slot held, so ``in_use`` is 1), a
    breaker whose failure rate is 0.5 and a pooled connection. A second
    dependency, ``{dependency}-endpoints``, has a breaker per endpoint (the
    ``seawall_endpoint`` label).
    """
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    previous = seawall.telemetry.configure(meter_provider=provider)
    upstream.route("/charges", Fault.error(503), Fault.ok())
    breaker = seawall.CircuitBreaker(minimum_calls=2, failure_rate_threshold=0.9)
    try:
        async with seawall.ResilientClient(
            dependency,
            policy=policy(breaker=breaker, bulkhead=seawall.Bulkhead(max_concurrent=1)),
            base_url=upstream.url,
        ) as client:
            await client.get("/charges")
            token = client.bulkhead.try_acquire()
            assert token is not None
            try:
                await client.get("/charges")
            except seawall.BulkheadFullError:
                pass
            else:  # pragma: no cover - the test's premise broke
                raise AssertionError("the bulkhead let a call through")
            async with seawall.ResilientClient(
                f"{dependency}-endpoints",
                policy=policy(breaker=breaker),
                endpoints=[upstream.url],
            ) as redundant:
                for _ in range(2):  # minimum_calls, for a failure rate
                    await redundant.get("/charges")
                text = generate_latest(registry).decode()
            client.bulkhead.release(token)
    finally:
        seawall.telemetry.configure(meter_provider=previous.meter_provider)
        provider.shutdown()
    return text


# -- an OTLP/HTTP receiver ------------------------------------------------------------------


class OtlpReceiver:
    """A tiny OTLP/HTTP trace receiver: ``POST /v1/traces``, protobuf, in a thread."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.requests.append(message)
                receiver.paths.append(self.path)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def spans(self) -> list[tuple[dict[str, Any], str, Span]]:
        """(resource attributes, scope name, span) of everything received."""
        found: list[tuple[dict[str, Any], str, Span]] = []
        for request in self.requests:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    found.extend((resource, ss.scope.name, span) for span in ss.spans)
        return found


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in kvs}
