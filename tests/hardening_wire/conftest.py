"""Fixtures for the wiring tests of issue 12's redaction (items 2, 11, 15).

Real OpenTelemetry SDK providers handed to seawall (never the global ones),
structlog's ``capture_logs``, and loopback servers; every setting is put back
after each test.
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
from seawall.testing import FaultyUpstream


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
        structlog.reset_defaults()  # capture_logs() leaves structlog "configured"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of a real SDK TracerProvider that seawall reports to."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seawall.telemetry.configure(tracer_provider=provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def metric_reader() -> Iterator[InMemoryMetricReader]:
    """An InMemoryMetricReader on a real SDK MeterProvider that seawall reports to."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    seawall.telemetry.configure(meter_provider=provider)
    yield reader
    provider.shutdown()


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    """A fresh, healthy loopback HTTP server for one test."""
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream_b() -> Iterator[FaultyUpstream]:
    """A second loopback server: another endpoint of the same dependency."""
    with FaultyUpstream() as server:
        yield server
