"""Retention, status, the asyncio-only error, and telemetry (spans, links, metrics, gauges)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import event

import seawall.telemetry
from conftest import T0, enqueue, row, rows, session
from seawall.outbox import Outbox, OutboxError
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


async def test_purge_deletes_only_old_terminal_rows_in_pages(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_age=30 * 86400)
    upstream.route("/fail", Fault.error(422))
    upstream.route("/later", Fault.error(503))
    done = [await enqueue(outbox) for _ in range(3)]
    failed = await enqueue(outbox, path="/fail")
    pending = await enqueue(outbox, path="/later")
    cancelled = await enqueue(outbox)
    async with session(outbox.engine) as s, s.begin():
        await outbox.cancel(s, cancelled.id)
    await outbox.dispatcher().run_once()
    clock.advance(8 * 86400)
    recent = await enqueue(outbox)
    await outbox.dispatcher().run_once()  # `recent` succeeds now; /later fails again
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(outbox.engine.sync_engine, "before_cursor_execute", seen)
    try:
        deleted = await outbox.purge(7 * 86400, page=2)
    finally:
        event.remove(outbox.engine.sync_engine, "before_cursor_execute", seen)
    assert deleted == 4  # three succeeded, one cancelled
    assert statements.count("DELETE") == 2 + 1  # pages of 2, 2, then 0
    left = {r["id"]: r["state"] for r in await rows(outbox)}
    assert left == {failed.id: "failed", pending.id: "pending", recent.id: "succeeded"}
    assert all(d.id not in left for d in done)


async def test_status_counts_ages_and_flags(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    @outbox.on_success("payments")
    async def hook(entry: Any, response: Any, s: Any) -> None:
        raise RuntimeError("oops")

    await enqueue(outbox)
    clock.advance(10)
    await enqueue(outbox, not_before=T0 + 1000)
    await outbox.dispatcher().run_once()
    clock.advance(5)
    found = await outbox.status()
    assert found == {
        "dependencies": {
            "payments": {
                "pending": {"count": 1, "oldest_age": 5.0, "needs_attention": 0},
                "succeeded": {"count": 1, "oldest_age": 15.0, "needs_attention": 1},
            }
        },
        "needs_attention": 1,
    }


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_trio_gets_a_clear_error(registry: Any, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db_url)
    outbox = Outbox(registry, engine)
    with pytest.raises(OutboxError, match="runs on asyncio only"):
        await outbox.enqueue(None, "payments", "POST", "/x")  # type: ignore[arg-type]
    with pytest.raises(OutboxError, match="runs on asyncio only"):
        await outbox.dispatcher().run_once()


# -- telemetry ------------------------------------------------------------------------


@pytest.fixture
def telemetry() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    previous = seawall.telemetry.settings()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    seawall.telemetry.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield spans, reader
    seawall.telemetry.configure(
        **{f.name: getattr(previous, f.name) for f in dataclasses.fields(previous)}
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found: list[Any] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


async def test_the_dispatch_span_starts_a_trace_linked_to_the_enqueue_span(
    outbox: Outbox,
    upstream: FaultyUpstream,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    spans, reader = telemetry
    tracer = trace.get_tracer("app", tracer_provider=seawall.telemetry.settings().tracer_provider)
    with tracer.start_as_current_span("POST /pay") as request_span:
        ref = await enqueue(outbox)
    await outbox.dispatcher().drain()
    finished = {s.name: s for s in spans.get_finished_spans()}
    enqueue_span = finished["seawall.outbox enqueue payments"]
    dispatch = finished["seawall.outbox dispatch payments"]
    call = finished["seawall payments POST"]
    assert enqueue_span.kind == SpanKind.PRODUCER
    assert enqueue_span.parent is not None
    assert enqueue_span.parent.span_id == request_span.get_span_context().span_id
    assert enqueue_span.attributes is not None
    assert enqueue_span.attributes["messaging.system"] == "seawall.outbox"
    assert enqueue_span.attributes["messaging.operation.type"] == "create"
    assert enqueue_span.attributes["messaging.destination.name"] == "payments"
    assert enqueue_span.attributes["messaging.message.id"] == str(ref.id)
    assert dispatch.kind == SpanKind.CONSUMER
    assert dispatch.parent is None  # a trace of its own
    assert dispatch.context.trace_id != enqueue_span.context.trace_id
    [link] = dispatch.links
    assert link.context.span_id == enqueue_span.context.span_id
    assert dispatch.attributes is not None
    assert dispatch.attributes["seawall.outbox.state_before"] == "dispatching"
    assert dispatch.attributes["seawall.outbox.state_after"] == "succeeded"
    assert dispatch.attributes["seawall.outbox.attempt"] == 1
    assert call.parent is not None
    assert call.parent.span_id == dispatch.context.span_id
    [request] = upstream.requests()
    traceparent = request.header("traceparent")
    assert traceparent is not None
    assert traceparent.split("-")[1] == format(dispatch.context.trace_id, "032x")
    [point] = _points(reader, "seawall.outbox.dispatches")
    assert (dict(point.attributes), point.value) == (
        {"seawall.dependency": "payments", "seawall.outcome": "succeeded"},
        1,
    )
    [lag] = _points(reader, "seawall.outbox.lag")
    assert lag.count == 1


async def test_the_gauges_report_counts_by_state(
    outbox: Outbox,
    upstream: FaultyUpstream,
    clock: ManualClock,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, reader = telemetry
    upstream.route("/v1/charges", Fault.ok(), Fault.error(503))
    for _ in range(3):
        await enqueue(outbox)
    d = outbox.dispatcher(concurrency=1)
    await d.run_once()
    clock.advance(20)
    await d.count()
    mine = outbox.table.name  # other outboxes of this process report too
    entries = {
        p.attributes["seawall.outbox.state"]: p.value
        for p in _points(reader, "seawall.outbox.entries")
        if p.attributes["seawall.outbox.table"] == mine
    }
    assert entries == {"succeeded": 1, "pending": 2}
    ages = {
        p.attributes["seawall.outbox.state"]: p.value
        for p in _points(reader, "seawall.outbox.oldest_age")
        if p.attributes["seawall.outbox.table"] == mine
    }
    assert ages == {"succeeded": 20.0, "pending": 20.0}


async def test_transitions_and_attention_are_logged(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    @outbox.on_success("payments")
    async def hook(entry: Any, response: Any, s: Any) -> None:
        raise RuntimeError("no order row")

    ref = await enqueue(outbox)
    with structlog.testing.capture_logs() as logs:
        await outbox.dispatcher().run_once()
    events = [
        (e["event"], e.get("to_state")) for e in logs if e["event"].startswith("seawall.outbox")
    ]
    assert ("seawall.outbox.transition", "dispatching") in events  # the claim (debug)
    assert ("seawall.outbox.transition", "succeeded") in events
    [attention] = [e for e in logs if e["event"] == "seawall.outbox.attention"]
    assert attention["log_level"] == "warning"
    assert attention["entry_id"] == ref.id
    assert "no order row" in attention["reason"]
    assert (await row(outbox, ref.id))["needs_attention"]


async def test_nothing_is_emitted_without_providers(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    """No SDK configured: enqueue stores no trace context and dispatch makes no span."""
    ref = await enqueue(outbox)
    await outbox.dispatcher().run_once()
    assert (await row(outbox, ref.id))["trace_context"] is None
    await anyio.lowlevel.checkpoint()


async def test_the_snapshot_and_status_endpoint_show_counts_and_ages(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    import httpx

    from seawall.asgi import status_app

    registry = outbox.registry
    assert registry.snapshot()["outbox"]["counted_ago"] is None  # nothing counted yet
    upstream.route("/v1/charges", Fault.ok(), Fault.error(503))
    await enqueue(outbox)
    await enqueue(outbox)
    d = outbox.dispatcher(concurrency=1)
    await d.run_once()
    clock.advance(30)
    await d.count()
    clock.advance(5)
    expected = {
        "table": outbox.table.name,
        "counted_ago": 5.0,
        "dependencies": {
            "payments": {
                "pending": {"count": 1, "oldest_age": 30.0},
                "succeeded": {"count": 1, "oldest_age": 30.0},
            }
        },
    }
    assert registry.snapshot()["outbox"] == expected
    transport = httpx.ASGITransport(app=status_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://status") as client:
        assert (await client.get("/")).json()["outbox"] == expected


async def test_compensate_and_reconcile_spans_link_to_the_enqueue_span(
    outbox: Outbox,
    upstream: FaultyUpstream,
    clock: ManualClock,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    spans, _ = telemetry
    outbox.route("ledger", honours_idempotency_key=False)
    upstream.route("/v1/charges", Fault.error(422))
    upstream.route("/ledger/entries", Fault.hang())

    @outbox.compensator("payments")
    async def undo(entry: Any, failure: Any, s: Any) -> None:
        pass

    @outbox.reconciler("ledger")
    async def settle(entries: list[Any], client: Any) -> dict[int, Any]:
        return {}

    await enqueue(outbox)
    await enqueue(outbox, "ledger", path="/entries")
    # The hung ledger call ends at a short read timeout: a shorter per-request timeout wins.
    outbox.registry.client("ledger").timeout = httpx.Timeout(0.2)
    await outbox.dispatcher().run_once()
    clock.advance(7200)
    await outbox.reconcile()
    finished = spans.get_finished_spans()
    by_name = {s.name: s for s in finished}
    enqueues = {
        s.attributes["messaging.destination.name"]: s  # type: ignore[index]
        for s in finished
        if s.name.startswith("seawall.outbox enqueue")
    }
    compensate = by_name["seawall.outbox compensate payments"]
    assert compensate.attributes["seawall.outbox.state_after"] == "compensated"  # type: ignore[index]
    assert [link.context.span_id for link in compensate.links] == [
        enqueues["payments"].context.span_id
    ]
    reconcile = by_name["seawall.outbox reconcile ledger"]
    assert [link.context.span_id for link in reconcile.links] == [
        enqueues["ledger"].context.span_id
    ]
