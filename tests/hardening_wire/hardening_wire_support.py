"""Helpers of the wiring tests: everything seawall showed, flattened to text."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan


def unique(prefix: str = "wire") -> str:
    """A dependency name no other test uses: gauges observe every live runtime."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def with_password(url: str, password: str, user: str = "alice") -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[dict[str, Any]]]:
    """Every data point's attributes, by metric name."""
    found: dict[str, list[dict[str, Any]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(
                    dict(p.attributes or {}) for p in metric.data.data_points
                )
    return found


def span_text(spans: Iterable[ReadableSpan]) -> str:
    """Names, attributes and event attributes of *spans*, as one text."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.append(repr(dict(span.attributes or {})))
        for event in span.events:
            parts.append(event.name)
            parts.append(repr(dict(event.attributes or {})))
    return "\n".join(parts)


def exception_events(spans: Iterable[ReadableSpan]) -> list[dict[str, Any]]:
    return [
        dict(event.attributes or {})
        for span in spans
        for event in span.events
        if event.name == "exception"
    ]
