"""docs/observability.md: its code runs, and its reference covers what seawall emits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs
from telemetry_support import (
    PROMETHEUS_NAMES,
    OtlpReceiver,
    attributes,
    call_spans,
    client_spans,
    metrics,
    policy,
    unique,
)

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

PAGE = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks() -> dict[str, str]:
    found = {}
    for n, fence in enumerate(FENCE.finditer(PAGE.read_text())):
        if fence.group(1) == "python":
            title = re.search(r'title="([^"]+)"', fence.group(2))
            found[title.group(1) if title else f"block-{n}"] = fence.group(3)
    return found


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text()


@pytest.mark.parametrize("name", sorted(python_blocks()))
def test_every_python_block_compiles(name: str) -> None:
    compile(python_blocks()[name], f"observability.md:{name}", "exec")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def test_the_wiring_snippet_exports_the_call_span(
    receiver: OtlpReceiver, upstream: FaultyUpstream, tmp_path: Path
) -> None:
    script = tmp_path / "telemetry_setup.py"
    script.write_text(python_blocks()["telemetry_setup.py"])
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "CATALOG_URL": upstream.url,
        "METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "200 success"
    (call,) = [
        s for _, scope, s in receiver.spans() if scope == "seawall" and s.name.startswith("seawall")
    ]
    assert call.name == "seawall catalog GET"
    assert attributes(call.attributes)["seawall.outcome"] == "success"
    assert {r["service.name"] for r, _, _ in receiver.spans()} == {"shop"}
    assert upstream.count("/") == 1


def documented(page: str, name: str) -> bool:
    return f"`{name}`" in page


@pytest.mark.anyio
async def test_every_attribute_event_and_metric_is_documented(
    page: str,
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    upstream: FaultyUpstream,
) -> None:
    """A call that uses everything (retry, breaker, bulkhead, fallback, rejection)."""
    dep = unique()
    clock = ManualClock()
    upstream.route("/a", Fault.error(503), Fault.error(500))
    breaker = seawall.CircuitBreaker(minimum_calls=2, window_size=2)
    fallback = seawall.Fallback(default=httpx.Response(200, json={}))
    with capture_logs() as logs:
        async with seawall.ResilientClient(
            dep,
            policy=policy(
                attempts=3, breaker=breaker, bulkhead=seawall.Bulkhead(), fallback=fallback
            ),
            base_url=upstream.url,
            clock=clock,
        ) as client:
            await client.get("/a")  # 503, 500: the breaker opens, the fallback answers
            await client.get("/a")  # rejected (and the fallback answers)
            client.breaker.force_closed()
            await client.get("/b")  # a plain success
    finished = spans.get_finished_spans()
    assert len(call_spans(finished, dep)) == 3
    assert len(client_spans(finished)) == 3
    names: set[str] = set()
    for span in finished:
        names |= set(span.attributes or {})
        for event in span.events:
            names.add(event.name)
            names |= set(event.attributes or {})
    names -= {"exception.type", "exception.message", "exception.stacktrace"}
    collected = metrics(metric_reader)
    names |= set(collected)
    for metric in collected.values():
        for point in metric.data.data_points:
            names |= set(point.attributes or {})
    assert "seawall.fallback" in names
    assert "seawall.rejected" in names
    assert "seawall.breaker.transition" in names
    assert "http.request.resend_count" in names
    missing = sorted(n for n in names if not documented(page, n))
    assert missing == []

    fields = {
        k for e in logs if e["event"] in ("seawall.call", "seawall.breaker.transition") for k in e
    }
    fields -= {"event", "log_level"}
    assert {"trace_id", "url", "timeout_total", "open_for"} <= fields
    assert sorted(f for f in fields if not documented(page, f)) == []


def test_every_prometheus_name_is_documented(page: str) -> None:
    for instrument, prometheus in PROMETHEUS_NAMES.items():
        assert f"| `{instrument}` | `{prometheus}`" in page
