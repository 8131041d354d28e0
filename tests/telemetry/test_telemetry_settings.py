"""No SDK, no cost; settings; seawall only reads the providers it is given (or the global ones)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs
from telemetry_support import call_span, policy, unique

import seawall
import seawall.telemetry
from seawall.telemetry import _otel
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def no_global_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process where no OpenTelemetry SDK was ever installed."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    seawall.telemetry.configure(tracer_provider=None, meter_provider=None)


@pytest.mark.usefixtures("no_global_providers")
async def test_without_any_provider_no_span_object_is_created(
    upstream: FaultyUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _otel.start_call("dep", "GET", httpx.AsyncHTTPTransport()) is None
    created: list[object] = []

    def spy(self: object, *args: object) -> None:
        created.append(args)

    monkeypatch.setattr(_otel.CallTelemetry, "__init__", spy)
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        response = await client.get("/x")
    assert created == []
    # Nothing to propagate either; the call itself is reported as ever.
    (request,) = upstream.requests("/x")
    assert request.header("traceparent") is None
    report = seawall.report_of(response)
    assert report is not None
    assert report.outcome == "success"


async def test_the_global_tracer_provider_is_used_when_none_is_given(
    upstream: FaultyUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # What trace.set_tracer_provider() does, undone after the test.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    seawall.telemetry.configure(tracer_provider=None)
    dep = unique()
    try:
        async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
            await client.get("/x")
    finally:
        provider.shutdown()
    assert call_span(exporter.get_finished_spans(), dep).name == f"seawall {dep} GET"


async def test_disable_turns_spans_and_logs_off_and_configure_restores_them(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    before = seawall.telemetry.disable()
    assert before.enabled
    assert _otel.start_call("dep", "GET", httpx.AsyncHTTPTransport()) is None
    dep = unique()
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False), base_url=upstream.url
    ) as client:
        upstream.route("/x", Fault.error(500))
        with capture_logs() as logs:
            await client.get("/x")
        assert spans.get_finished_spans() == ()
        assert logs == []
        assert upstream.requests("/x")[0].header("traceparent") is None

        disabled = seawall.telemetry.configure(enabled=True)
        assert disabled.enabled is False
        await client.get("/x")
    assert call_span(spans.get_finished_spans(), dep).attributes is not None


def test_configure_returns_the_previous_settings_which_are_frozen() -> None:
    provider = TracerProvider()
    first = seawall.telemetry.configure(tracer_provider=provider, success_log_level="off")
    second = seawall.telemetry.configure(attempt_spans="off")
    assert second.tracer_provider is provider
    assert second.success_log_level == "off"
    assert second.attempt_spans == first.attempt_spans
    now = seawall.telemetry.settings()
    assert (now.tracer_provider, now.attempt_spans) == (provider, "off")
    with pytest.raises(dataclasses.FrozenInstanceError):
        now.enabled = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        seawall.telemetry.configure(no_such_setting=True)


def test_defaults_match_the_documentation() -> None:
    defaults = seawall.telemetry.TelemetrySettings()
    assert defaults.enabled is True
    assert defaults.tracer_provider is None
    assert defaults.meter_provider is None
    assert defaults.success_log_level == "debug"
    assert defaults.failure_log_level == "info"
    assert defaults.attempt_spans == "auto"
