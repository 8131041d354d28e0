"""Metrics through the real SDK (InMemoryMetricReader) and the Prometheus exporter."""

from __future__ import annotations

import gc

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Sum,
)
from prometheus_client.parser import text_string_to_metric_families
from telemetry_support import (
    PROMETHEUS_NAMES,
    REJECTIONS,
    metrics,
    origin,
    points,
    policy,
    prometheus_exposition,
    rejecting_client,
    rejection_error,
    unique,
    until,
    value,
)

import seawall
import seawall.telemetry
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

#: The bucket boundaries the HTTP semantic conventions advise for durations in seconds.
FAILED_503 = {
    "seawall_outcome": "http_error",
    "http_response_status_code": "503",
    "error_type": "503",
}
SEMCONV_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


async def test_attempts_calls_and_retries_are_measured(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/items", Fault.error(503), Fault.ok())
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/items")
    collected = metrics(metric_reader)
    port = int(origin(upstream).rsplit(":", 1)[1])

    attempts = collected["http.client.request.duration"]
    assert attempts.unit == "s"
    assert isinstance(attempts.data, Histogram)
    failed, succeeded = (
        points(collected, "http.client.request.duration", seawall__dependency=dep, **extra)
        for extra in ({"seawall__outcome": "http_error"}, {"seawall__outcome": "success"})
    )
    assert len(failed) == len(succeeded) == 1
    assert dict(failed[0].attributes or {}) == {
        "seawall.dependency": dep,
        "seawall.outcome": "http_error",
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert dict(succeeded[0].attributes or {}) == {
        "seawall.dependency": dep,
        "seawall.outcome": "success",
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
    }
    for point in (*failed, *succeeded):
        assert isinstance(point, HistogramDataPoint)
        assert point.count == 1
        assert 0.0 < point.sum < 1.0

    (call,) = points(collected, "seawall.call.duration", seawall__dependency=dep)
    assert collected["seawall.call.duration"].unit == "s"
    assert isinstance(call, HistogramDataPoint)
    assert dict(call.attributes or {}) == {"seawall.dependency": dep, "seawall.outcome": "success"}
    assert call.count == 1
    # The call covers both attempts.
    assert call.sum >= failed[0].sum + succeeded[0].sum

    calls = collected["seawall.calls"]
    assert isinstance(calls.data, Sum)
    assert calls.data.is_monotonic
    assert calls.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    assert value(collected, "seawall.calls", seawall__dependency=dep) == 1
    assert value(collected, "seawall.calls", seawall__dependency=dep, seawall__outcome="success")
    assert (
        value(collected, "seawall.retries", seawall__dependency=dep, seawall__reason="status_503")
        == 1
    )
    assert points(collected, "seawall.rejections", seawall__dependency=dep) == []


async def test_durations_use_the_semconv_buckets_in_seconds(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/slow", Fault.latency(0.03))
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/slow")
    collected = metrics(metric_reader)
    for name in ("http.client.request.duration", "seawall.call.duration"):
        (point,) = points(collected, name, seawall__dependency=dep)
        assert isinstance(point, HistogramDataPoint)
        assert tuple(point.explicit_bounds) == SEMCONV_BUCKETS
        # 30 ms lands between 25 ms and 100 ms, not in a catch-all bucket.
        landed = [b for b, n in zip((0.0, *SEMCONV_BUCKETS), point.bucket_counts, strict=True) if n]
        assert len(landed) == 1
        assert 0.025 <= landed[0] < 0.1


@pytest.mark.parametrize("kind", REJECTIONS)
async def test_rejections_are_counted_by_reason(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream, kind: str
) -> None:
    dep = unique(kind)
    async with rejecting_client(kind, dep, upstream) as client:
        with pytest.raises(rejection_error(kind)):
            await client.get("/refused")
    collected = metrics(metric_reader)
    assert (
        value(collected, "seawall.rejections", seawall__dependency=dep, seawall__reason=kind) == 1
    )
    assert value(collected, "seawall.calls", seawall__dependency=dep, seawall__outcome=kind) == 1
    # The rejected call never left: no attempt of it was measured (the rate
    # limiter's case made one admitted call first).
    attempts = points(collected, "http.client.request.duration", seawall__dependency=dep)
    assert sum(p.count for p in attempts if isinstance(p, HistogramDataPoint)) == (
        1 if kind == "rate_limited" else 0
    )


async def test_breaker_state_gauge_follows_every_state(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    clock = ManualClock()
    breaker = seawall.CircuitBreaker(
        minimum_calls=2, window_size=4, open_duration=10.0, half_open_calls=1
    )
    upstream.route("/p", Fault.error(500), Fault.ok())
    async with seawall.ResilientClient(
        dep, policy=policy(retry=False, breaker=breaker), base_url=upstream.url, clock=clock
    ) as client:

        def state() -> float | None:
            return value(metrics(metric_reader), "seawall.breaker.state", seawall__dependency=dep)

        def failure_rate() -> float | None:
            return value(
                metrics(metric_reader), "seawall.breaker.failure_rate", seawall__dependency=dep
            )

        # Observed from the start, before any call.
        assert state() == 0  # closed
        await client.get("/p")  # 500
        assert failure_rate() is None  # under minimum_calls
        await client.get("/p")  # 200: 1 failure in 2 calls opens (threshold 0.5)
        assert state() == 2  # open
        assert failure_rate() == 0.5
        clock.advance(10.0)
        assert state() == 1  # half-open once the open time is up
        client.breaker.force_open()
        assert state() == 3  # forced open
        client.breaker.force_closed()
        assert state() == 0


async def test_gauges_start_when_a_meter_provider_comes_after_the_clients(
    upstream: FaultyUpstream,
) -> None:
    dep = unique()
    async with seawall.ResilientClient(
        dep,
        policy=policy(
            breaker=seawall.CircuitBreaker(), bulkhead=seawall.Bulkhead(max_concurrent=7)
        ),
        base_url=upstream.url,
    ) as client:
        client.breaker.force_open()
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        seawall.telemetry.configure(meter_provider=provider)
        try:
            collected = metrics(reader)  # no call made since
        finally:
            provider.shutdown()
    assert value(collected, "seawall.breaker.state", seawall__dependency=dep) == 3
    assert value(collected, "seawall.bulkhead.limit", seawall__dependency=dep) == 7


async def test_bulkhead_gauges_show_slots_in_use_and_the_limit(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    async with seawall.ResilientClient(
        dep, policy=policy(bulkhead=seawall.Bulkhead(max_concurrent=3)), base_url=upstream.url
    ) as client:
        collected = metrics(metric_reader)
        assert value(collected, "seawall.bulkhead.in_use", seawall__dependency=dep) == 0
        assert value(collected, "seawall.bulkhead.limit", seawall__dependency=dep) == 3
        tokens = [client.bulkhead.try_acquire(), client.bulkhead.try_acquire()]
        assert (
            value(metrics(metric_reader), "seawall.bulkhead.in_use", seawall__dependency=dep) == 2
        )
        for token in tokens:
            assert token is not None
            client.bulkhead.release(token)
        assert (
            value(metrics(metric_reader), "seawall.bulkhead.in_use", seawall__dependency=dep) == 0
        )


async def test_pool_gauge_counts_active_and_idle_connections(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    upstream.route("/hang", Fault.hang())

    def pool(state: str) -> float | None:
        return value(
            metrics(metric_reader), "seawall.pool.connections", seawall__dependency=dep, state=state
        )

    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        assert (pool("idle"), pool("active")) == (0, 0)  # no connection yet
        await client.get("/x")
        assert (pool("idle"), pool("active")) == (1, 0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hang")
            await until(lambda: upstream.count("/hang") == 1)
            assert pool("active") == 1
            tg.cancel_scope.cancel()


async def test_gauges_observe_only_live_runtimes(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    dep = unique()
    client = seawall.ResilientClient(
        dep,
        policy=policy(breaker=seawall.CircuitBreaker(), bulkhead=seawall.Bulkhead()),
        base_url=upstream.url,
    )
    async with client:
        await client.get("/x")
    assert value(metrics(metric_reader), "seawall.breaker.state", seawall__dependency=dep) == 0
    del client
    gc.collect()
    collected = metrics(metric_reader)
    for gauge in ("seawall.breaker.state", "seawall.bulkhead.limit", "seawall.pool.connections"):
        assert points(collected, gauge, seawall__dependency=dep) == []


async def test_nothing_is_measured_when_disabled(
    metric_reader: InMemoryMetricReader, upstream: FaultyUpstream
) -> None:
    seawall.telemetry.disable()
    dep = unique()
    async with seawall.ResilientClient(dep, policy=policy(), base_url=upstream.url) as client:
        await client.get("/x")
    assert points(metrics(metric_reader), "seawall.calls", seawall__dependency=dep) == []


# -- the Prometheus exporter -----------------------------------------------------------------


async def test_prometheus_exposition_names_and_labels(upstream: FaultyUpstream) -> None:
    dep = unique("pay")
    text = await prometheus_exposition(upstream, dep)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        # The exporter gives every sample of a family the union of its labels (empty if absent).
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v and k[:5] != "otel_"))): (
            s.value
        )
        for f in families.values()
        for s in f.samples
        if s.labels.get("seawall_dependency") == dep
    }
    names = {name for name, _ in samples}
    assert names == {
        "http_client_request_duration_seconds_bucket",
        "http_client_request_duration_seconds_count",
        "http_client_request_duration_seconds_sum",
        "seawall_call_duration_seconds_bucket",
        "seawall_call_duration_seconds_count",
        "seawall_call_duration_seconds_sum",
        "seawall_calls_total",
        "seawall_retries_total",
        "seawall_rejections_total",
        "seawall_breaker_state",
        "seawall_breaker_failure_rate",
        "seawall_bulkhead_in_use",
        "seawall_bulkhead_limit",
        "seawall_pool_connections",
    }
    for prometheus_name in PROMETHEUS_NAMES.values():
        assert any(n.startswith(prometheus_name) for n in names), prometheus_name
    assert families["seawall_calls"].type == "counter"
    assert families["seawall_retries"].type == "counter"
    assert families["seawall_rejections"].type == "counter"
    assert families["http_client_request_duration_seconds"].type == "histogram"
    assert families["seawall_call_duration_seconds"].type == "histogram"
    for gauge in ("breaker_state", "breaker_failure_rate", "bulkhead_in_use", "pool_connections"):
        assert families[f"seawall_{gauge}"].type == "gauge"

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"seawall_dependency": dep, **labels}.items())))]

    assert sample("seawall_calls_total", seawall_outcome="success") == 1
    assert sample("seawall_calls_total", seawall_outcome="bulkhead_full") == 1
    assert sample("seawall_retries_total", seawall_reason="status_503") == 1
    assert sample("seawall_rejections_total", seawall_reason="bulkhead_full") == 1
    assert sample("seawall_breaker_state") == 0
    assert sample("seawall_breaker_failure_rate") == 0.5
    assert sample("seawall_bulkhead_limit") == 1
    assert sample("seawall_bulkhead_in_use") == 1
    assert sample("seawall_pool_connections", state="idle") == 1
    assert sample("seawall_call_duration_seconds_count", seawall_outcome="success") == 1
    port = origin(upstream).rsplit(":", 1)[1]
    attempt = {
        "http_request_method": "GET",
        "server_address": "127.0.0.1",
        "server_port": port,
        "seawall_outcome": "success",
        "http_response_status_code": "200",
    }
    assert sample("http_client_request_duration_seconds_count", **attempt) == 1
    assert sample("http_client_request_duration_seconds_bucket", le="0.1", **attempt) == 1
    assert sample("http_client_request_duration_seconds_bucket", le="+Inf", **attempt) == 1
    assert sample("http_client_request_duration_seconds_count", **{**attempt, **FAILED_503}) == 1
