"""No secret reaches any output (issue 12, item 2): endpoint URL passwords and
header values quoted by an underlying error, through real SDK providers,
structlog's capture_logs and loopback servers."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from hardening_wire_support import (
    exception_events,
    metric_points,
    span_text,
    unique,
    with_password,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PASSWORD = "pw-S3CRET-endpoint"
TOKEN = "tok-S3CRET-header"
ONE_ATTEMPT = seawall.Retry(attempts=1)


async def test_an_endpoint_password_reaches_no_output(
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    upstream: FaultyUpstream,
    upstream_b: FaultyUpstream,
) -> None:
    dep = unique()
    upstream.set_default(Fault.error(500))
    upstream_b.set_default(Fault.error(500))
    secret_url = with_password(upstream.url, PASSWORD)
    masked = with_password(upstream.url, "[secure]")
    policy = seawall.Policy(
        retry=ONE_ATTEMPT,
        breaker=seawall.CircuitBreaker(minimum_calls=1, failure_rate_threshold=0.5),
    )
    with capture_logs() as logs:
        async with seawall.ResilientClient(
            dep, endpoints=[secret_url, upstream_b.url], policy=policy
        ) as client:
            # a answers 500 and its breaker opens; the next call fails over to
            # b, whose breaker opens too; then both refuse.
            assert (await client.get(secret_url + "/p")).status_code == 500
            assert (await client.get(secret_url + "/p")).status_code == 500
            with pytest.raises(seawall.CircuitOpenError) as refused:
                await client.get(secret_url + "/p")
            breaker = client.breakers[secret_url]
            with pytest.raises(seawall.CircuitOpenError) as own:
                breaker.acquire()
            snapshot = client.resilient_transport.runtime.snapshot()
            gauges = metric_points(metric_reader)  # read while the runtime lives
            shown = [
                str(refused.value),
                repr(refused.value),
                str(own.value),
                repr(own.value),
                *map(repr, client.breakers.values()),
                json.dumps(snapshot),
            ]
    transitions = [
        e for e in logs if e["event"] == "seawall.breaker.transition" and e["dependency"] == dep
    ]

    # Shown, with the password masked as httpx masks it.
    assert masked in str(own.value)
    assert f"endpoint={masked!r}" in repr(breaker)
    assert [ep["url"] for ep in snapshot["endpoints"]] == [masked, upstream_b.url]
    assert {e["endpoint"] for e in transitions} == {masked, upstream_b.url}
    assert {
        p["seawall.endpoint"]
        for p in gauges["seawall.breaker.state"]
        if p["seawall.dependency"] == dep
    } == {masked, upstream_b.url}
    assert exception_events(spans.get_finished_spans())  # the refusal's event is there

    # And nowhere in clear, nor as the Basic credentials httpx built from it.
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    outputs = "\n".join([*shown, repr(logs), repr(gauges), span_text(spans.get_finished_spans())])
    assert PASSWORD not in outputs
    assert basic not in outputs


async def test_a_header_value_refused_by_h11_reaches_no_span_or_log(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    # h11 refuses a header value ending in a newline, quoting it in its message:
    # "Illegal header value b'Bearer tok...\\n'".
    dep = unique()
    with capture_logs() as logs:
        async with seawall.ResilientClient(
            dep, base_url=upstream.url, policy=seawall.Policy(retry=ONE_ATTEMPT)
        ) as client:
            with pytest.raises(httpx.LocalProtocolError) as refused:
                await client.get("/p", headers={"Authorization": f"Bearer {TOKEN}\n"})
    assert TOKEN in str(refused.value)  # the caller's own error keeps its message
    assert upstream.requests() == []

    (event,) = exception_events(spans.get_finished_spans())
    assert event["exception.type"].endswith("LocalProtocolError")
    assert event["exception.message"] == "Illegal header value [secret]"
    stacktrace = event["exception.stacktrace"]
    # Frames are kept; every error of the chain has its message scrubbed.
    assert 'File "' in stacktrace
    assert stacktrace.count("LocalProtocolError: Illegal header value [secret]") >= 2
    (call,) = [e for e in logs if e["event"] == "seawall.call" and e["dependency"] == dep]
    assert call["outcome"] == "error"
    assert TOKEN not in span_text(spans.get_finished_spans())
    assert TOKEN not in repr(logs)


async def test_every_error_of_a_chain_is_scrubbed_in_the_exception_event(
    spans: InMemorySpanExporter,
) -> None:
    # A guarded call: the error, its cause and the members of an exception
    # group each quote a secret; the event shows none, and keeps the frames.
    dep = unique()

    async def call() -> None:
        try:
            raise ConnectionError(f"refused by http://bob:{PASSWORD}@10.0.0.1:81/x")
        except ConnectionError as cause:
            raise ExceptionGroup(
                "both failed",
                [
                    ValueError(f"bad header value: b'Bearer {TOKEN}'"),
                    # A multi-line message: a group indents each of its lines.
                    RuntimeError(f"header\n  {TOKEN!r} refused"),
                ],
            ) from cause

    g = seawall.guard(dep, seawall.Policy(retry=ONE_ATTEMPT))
    with pytest.raises(ExceptionGroup):
        await g.call(call)
    (event,) = exception_events(spans.get_finished_spans())
    text = repr(event)
    assert TOKEN not in text
    assert PASSWORD not in text
    stacktrace = event["exception.stacktrace"]
    assert "http://bob:[secure]@10.0.0.1:81/x" in stacktrace
    assert "bad header value: [secret]" in stacktrace
    assert "| RuntimeError: header" in stacktrace
    assert "|   [secret] refused" in stacktrace
    assert "in call" in stacktrace  # the frame of the function that raised
