"""structlog events: ``seawall.call`` per call, ``seawall.breaker.transition`` per transition."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs
from telemetry_support import call_span, call_spans, origin, policy, traceparent_of, unique

import seawall
import seawall.telemetry
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

TIMEOUTS = seawall.Timeouts(connect=1.0, read=2.0, write=3.0, pool=4.0, attempt=5.0, total=6.0)


def events(logs: list[MutableMapping[str, Any]], name: str, dependency: str) -> list[Any]:
    return [e for e in logs if e["event"] == name and e.get("dependency") == dependency]


async def test_a_failed_call_is_logged_at_info_with_the_span_fields_and_ids(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/orders", Fault.error(503))
    async with seawall.ResilientClient(
        dep, policy=policy(attempts=2, timeouts=TIMEOUTS), base_url=upstream.url
    ) as client:
        with capture_logs() as logs:
            response = await client.get("/orders", params={"page": "3"})
    assert response.status_code == 503

    (event,) = events(logs, "seawall.call", dep)
    trace_id, span_id = traceparent_of(call_span(spans.get_finished_spans(), dep))
    elapsed = event.pop("elapsed")
    assert isinstance(elapsed, float)
    assert elapsed > 0
    assert event == {
        "event": "seawall.call",
        "log_level": "info",
        "dependency": dep,
        "endpoint": origin(upstream),
        "method": "GET",
        "outcome": "retry_exhausted",
        "status_code": 503,
        "attempts": 2,
        "retries": ["status_503"],
        "retry_stopped": None,
        "breaker_state_before": None,
        "breaker_state": None,
        "bulkhead_wait": 0.0,
        "fallback": None,
        "deadline_remaining": 6.0,
        "timeout_connect": 1.0,
        "timeout_read": 2.0,
        "timeout_write": 3.0,
        "timeout_pool": 4.0,
        "timeout_attempt": 5.0,
        "timeout_total": 6.0,
        "url": f"{origin(upstream)}/orders?page=3",
        "trace_id": trace_id,
        "span_id": span_id,
    }


async def test_a_fallback_is_logged_at_info_even_though_the_caller_got_an_answer(
    upstream: FaultyUpstream,
) -> None:
    dep = unique()
    upstream.route("/prices", Fault.error(500))
    fallback = seawall.Fallback(default=httpx.Response(200, json=[]))
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False, fallback=fallback), base_url=upstream.url
    ) as client:
        with capture_logs() as logs:
            assert (await client.get("/prices")).status_code == 200

    (event,) = events(logs, "seawall.call", dep)
    assert event["log_level"] == "info"
    assert event["fallback"] == "default"
    assert event["outcome"] == "http_error"
    # No tracer configured: no ids to correlate with.
    assert "trace_id" not in event
    assert "span_id" not in event


async def test_a_plain_success_is_logged_at_debug_once_structlog_is_configured(
    upstream: FaultyUpstream,
) -> None:
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        with capture_logs() as logs:  # configures structlog
            await client.get("/ok")

    (event,) = events(logs, "seawall.call", dep)
    assert event["log_level"] == "debug"
    assert event["outcome"] == "success"
    assert event["status_code"] == 200


async def test_with_structlog_unconfigured_only_failures_are_printed(
    upstream: FaultyUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    structlog.reset_defaults()  # as in an app that never configured structlog
    dep = unique()
    upstream.route("/flaky", Fault.ok(), Fault.error(500))
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False), base_url=upstream.url
    ) as client:
        await client.get("/flaky")  # a plain success: no line
        assert dep not in capfd.readouterr().out
        await client.get("/flaky")  # a failure: one line
    out = capfd.readouterr().out
    assert out.count("seawall.call") == 1
    assert dep in out
    assert "http_error" in out
    assert not structlog.is_configured()  # and seawall did not configure it


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"success_log_level": "info"}, ["info", "info"]),
        ({"success_log_level": "off"}, ["info"]),
        ({"failure_log_level": "warning"}, ["debug", "warning"]),
        ({"failure_log_level": "off", "success_log_level": "off"}, []),
        ({"enabled": False}, []),
    ],
)
async def test_log_levels_follow_the_settings(
    upstream: FaultyUpstream, changes: dict[str, object], expected: list[str]
) -> None:
    seawall.telemetry.configure(**changes)
    dep = unique()
    upstream.route("/x", Fault.ok(), Fault.error(500))
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False), base_url=upstream.url
    ) as client:
        with capture_logs() as logs:
            await client.get("/x")  # success
            await client.get("/x")  # failure
    assert [e["log_level"] for e in events(logs, "seawall.call", dep)] == expected


async def test_a_breaker_transition_is_a_warning_carrying_the_call_span_ids(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/flaky", Fault.error(500))
    breaker = seawall.CircuitBreaker(minimum_calls=1, window_size=1, open_duration=12.0)
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False, breaker=breaker), base_url=upstream.url
    ) as client:
        with capture_logs() as logs:
            await client.get("/flaky")
            with pytest.raises(seawall.CircuitOpenError):
                await client.get("/flaky")

    (transition,) = events(logs, "seawall.breaker.transition", dep)
    first, _rejected = sorted(
        call_spans(spans.get_finished_spans(), dep), key=lambda s: s.start_time or 0
    )
    trace_id, span_id = traceparent_of(first)
    assert transition == {
        "event": "seawall.breaker.transition",
        "log_level": "warning",
        "dependency": dep,
        "endpoint": None,
        "from_state": "closed",
        "to_state": "open",
        "reason": "failure_rate",
        "open_for": 12.0,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    # The transition is logged while the call that caused it runs, before its own event.
    calls = events(logs, "seawall.call", dep)
    assert [e["outcome"] for e in calls] == ["http_error", "circuit_open"]
    assert logs.index(transition) < logs.index(calls[0])
    assert calls[1]["breaker_state"] == "open"
    assert calls[1]["attempts"] == 0


async def test_a_manual_transition_outside_any_call_has_no_trace_ids(
    spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    dep = unique()
    async with seawall.ResilientClient(
        dep, policy=policy(breaker=seawall.CircuitBreaker()), base_url=upstream.url
    ) as client:
        with capture_logs() as logs:
            client.breaker.force_open()
    (transition,) = events(logs, "seawall.breaker.transition", dep)
    assert transition["to_state"] == "forced_open"
    assert transition["reason"] == "forced_open"
    assert "trace_id" not in transition
