"""Fixtures for the telemetry tests: real SDK providers handed to seawall, never global.

seawall never configures OpenTelemetry or structlog itself, and neither do
these tests: each hands its own SDK objects to ``seawall.telemetry.configure``
and every setting (seawall's and structlog's) is put back after the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import seawall.telemetry
from seawall.testing._upstream import FaultyUpstream


@pytest.fixture(autouse=True)
def _restore_settings() -> Iterator[None]:
    """seawall's telemetry settings and structlog's configuration, as they were."""
    previous = seawall.telemetry.settings()
    was_configured = structlog.is_configured()
    structlog_config = structlog.get_config()
    yield
    seawall.telemetry.configure(
        **{f.name: getattr(previous, f.name) for f in dataclasses.fields(previous)}
    )
    if was_configured:
        structlog.configure(**structlog_config)
    else:
        # capture_logs() leaves structlog "configured": undo it.
        structlog.reset_defaults()


@pytest.fixture
def tracer_provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    yield provider
    provider.shutdown()


@pytest.fixture
def spans(tracer_provider: TracerProvider) -> InMemorySpanExporter:
    """Finished spans of a real SDK TracerProvider that seawall reports to."""
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    seawall.telemetry.configure(tracer_provider=tracer_provider)
    return exporter


@pytest.fixture
def metric_reader() -> Iterator[InMemoryMetricReader]:
    """An InMemoryMetricReader on a real SDK MeterProvider that seawall reports to."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    seawall.telemetry.configure(meter_provider=provider)
    yield reader
    provider.shutdown()


@pytest.fixture(scope="session")
def _server() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream(_server: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """A healthy loopback HTTP server with no routes and an empty request log."""
    _server.reset()
    yield _server
    _server.reset()
