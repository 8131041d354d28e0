"""Guard calls are reported like HTTP calls, less the HTTP parts (issue 10, item 3):
the call span, the call metrics and the ``seawall.call`` event, through the real SDK."""

from __future__ import annotations

import pytest
import structlog
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_support import metrics, unique, value

import seawall

pytestmark = pytest.mark.anyio

NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)


def guarded(name: str) -> seawall.Guard:
    policy = seawall.Policy(
        retry=seawall.Retry(attempts=2, backoff=NO_WAIT, budget=None),
        breaker=seawall.CircuitBreaker(),
    )
    return seawall.guard(name, policy, registry=seawall.Registry())


async def test_a_guard_call_has_its_span_and_its_metrics(
    spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    name = unique("db")
    g = guarded(name)
    tries = 0

    async def query() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionError("reset")
        return "row"

    assert await g.call(query) == "row"
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"seawall {name}"]
    assert span.kind is SpanKind.INTERNAL
    attrs = dict(span.attributes or {})
    assert attrs["seawall.dependency"] == name
    assert attrs["seawall.outcome"] == "success"
    assert attrs["seawall.attempts"] == 2
    assert list(attrs["seawall.retry.reasons"]) == ["connection_error"]  # type: ignore[arg-type]
    assert attrs["seawall.timeout.attempt"] == 10.0
    assert "http.request.method" not in attrs
    assert [e.name for e in span.events] == ["seawall.retry"]
    collected = metrics(metric_reader)
    assert value(collected, "seawall.calls", seawall__dependency=name) == 1
    assert value(collected, "seawall.retries", seawall__dependency=name) == 1


async def test_the_guarded_functions_own_spans_nest_under_the_call_span(
    spans: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    name = unique("db")
    tracer = tracer_provider.get_tracer("app")

    async def query() -> None:
        with tracer.start_as_current_span("SELECT"):
            pass

    await guarded(name).call(query)
    finished = spans.get_finished_spans()
    call = next(s for s in finished if s.name == f"seawall {name}")
    inner = next(s for s in finished if s.name == "SELECT")
    assert inner.parent is not None
    assert inner.parent.span_id == call.context.span_id


async def test_a_failed_guard_call_is_an_error_span_and_a_logged_event(
    spans: InMemorySpanExporter,
) -> None:
    name = unique("db")

    async def broken() -> None:
        raise KeyError("bug")

    with structlog.testing.capture_logs() as logs, pytest.raises(KeyError):
        await guarded(name).call(broken)
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"seawall {name}"]
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["seawall.outcome"] == "error"
    (event,) = [e for e in logs if e["event"] == "seawall.call"]
    assert (event["dependency"], event["outcome"], event["log_level"]) == (name, "error", "info")
    assert "url" not in event


async def test_an_async_with_block_is_one_call(spans: InMemorySpanExporter) -> None:
    name = unique("db")
    async with guarded(name):
        pass
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"seawall {name}"]
    assert dict(span.attributes or {})["seawall.attempts"] == 1


async def test_refusals_are_debug_events_and_only_into_a_configured_structlog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()  # as an app that never configured it (the fixture restores)
    name = unique("db")
    g = guarded(name)
    assert g.breaker is not None
    g.breaker.force_open()

    async def query() -> None:
        raise AssertionError("never called")

    for _ in range(3):
        with pytest.raises(seawall.CircuitOpenError):
            await g.call(query)
    assert "seawall.call" not in capsys.readouterr().out  # an outage prints nothing
    with structlog.testing.capture_logs() as logs, pytest.raises(seawall.CircuitOpenError):
        await g.call(query)
    (event,) = [e for e in logs if e["event"] == "seawall.call"]
    assert (event["outcome"], event["log_level"]) == ("circuit_open", "debug")
