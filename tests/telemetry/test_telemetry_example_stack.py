"""examples/observability: the compose stack's files parse and agree, the dashboard's
queries name what the Prometheus exporter really emits, and the example app serves it."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from telemetry_support import call_spans, prometheus_exposition, unique

import seawall.telemetry
from seawall.testing._upstream import Fault, FaultyUpstream

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "examples" / "observability"


def load_yaml(name: str) -> Any:
    return yaml.safe_load((STACK / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml("docker-compose.yml")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((STACK / "dashboard.json").read_text())  # type: ignore[no-any-return]


def test_compose_runs_jaeger_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"jaeger", "prometheus", "grafana"}
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert {p.split(":")[0].strip('"') for p in jaeger["ports"]} >= {"4317", "4318", "16686"}
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    prometheus = services["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    assert "9090:9090" in prometheus["ports"]
    assert "3000:3000" in services["grafana"]["ports"]


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    mounts = [v for s in compose["services"].values() for v in s.get("volumes", [])]
    assert mounts
    for mount in mounts:
        source = mount.split(":")[0]
        assert (STACK / source).exists(), mount


def test_prometheus_scrapes_the_example_app_on_the_host() -> None:
    config = load_yaml("prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["host.docker.internal:8000"]}]


def test_grafana_provisioning_points_at_the_stack_and_the_dashboard(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    datasources = load_yaml("grafana/provisioning/datasources/datasources.yml")["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    # Every panel's data source is the provisioned Prometheus.
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {by_type["prometheus"]["uid"]}
    # The provider's folder is where compose mounts dashboard.json.
    (provider,) = load_yaml("grafana/provisioning/dashboards/dashboards.yml")["providers"]
    folder = provider["options"]["path"]
    grafana_mounts = dict(v.rsplit(":", 2)[:2] for v in compose["services"]["grafana"]["volumes"])
    assert grafana_mounts["./dashboard.json"].startswith(folder + "/")
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_has_the_promised_panels(dashboard: dict[str, Any]) -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    calls = exprs["Calls by outcome"]
    assert "rate(seawall_calls_total" in calls
    assert "seawall_outcome" in calls
    latency = exprs["Attempt latency p50 / p99 per dependency"]
    assert "histogram_quantile(0.5," in latency
    assert "histogram_quantile(0.99," in latency
    assert "http_client_request_duration_seconds_bucket" in latency
    assert "by (le, seawall_dependency)" in latency
    assert "seawall_breaker_state" in exprs["Breaker state"]
    saturation = exprs["Bulkhead saturation (in use / limit)"]
    assert re.search(r"seawall_bulkhead_in_use\{.*\}\) / .*seawall_bulkhead_limit", saturation)
    assert "seawall_reason" in exprs["Retries by reason"]
    assert "seawall_retries_total" in exprs["Retries by reason"]
    (timeline,) = [p for p in dashboard["panels"] if p["title"] == "Breaker state"]
    assert timeline["type"] == "state-timeline"
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    assert {k: v["text"] for k, v in mapping["options"].items()} == {
        "0": "closed",
        "1": "half-open",
        "2": "open",
        "3": "forced open",
    }
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def _names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to."""
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in grouping.split(",")}
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", re.sub(r"\{[^}]*\}", "", expr))
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    names = set(re.findall(r"\b(?:seawall|http_client)_\w+", bare))
    return names, labels


@pytest.mark.anyio
async def test_dashboard_queries_name_what_the_prometheus_exporter_emits(
    dashboard: dict[str, Any], upstream: FaultyUpstream
) -> None:
    text = await prometheus_exposition(upstream, unique("dash"))
    emitted: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            emitted[sample.name] |= {k for k, v in sample.labels.items() if v}

    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variable = dashboard["templating"]["list"][0]["query"]["query"]
    assert variable == "label_values(seawall_calls_total, seawall_dependency)"
    queries.append("seawall_calls_total{seawall_dependency=~'.+'}")
    used = set()
    for expr in queries:
        names, labels = _names_and_labels(expr)
        assert names, expr
        used |= names
        for name in names:
            assert name in emitted, f"{name} (in {expr!r}) is not emitted"
        available = set().union(*(emitted[n] for n in names))
        assert labels <= available, (expr, labels - available)
    # Every seawall instrument is on the dashboard.
    assert {re.sub(r"_(bucket|count|sum)$", "", n) for n in used} == {
        "http_client_request_duration_seconds",
        "seawall_call_duration_seconds",
        "seawall_calls_total",
        "seawall_retries_total",
        "seawall_rejections_total",
        "seawall_breaker_state",
        "seawall_breaker_failure_rate",
        "seawall_bulkhead_in_use",
        "seawall_bulkhead_limit",
        "seawall_pool_connections",
    }


# -- the example app ------------------------------------------------------------------------


@pytest.fixture
def example_app_module() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.observability import app

    return app


@pytest.mark.anyio
async def test_the_example_app_serves_its_calls_as_prometheus_metrics(
    example_app_module: Any, spans: InMemorySpanExporter, upstream: FaultyUpstream
) -> None:
    metrics_registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=metrics_registry)])
    seawall.telemetry.configure(meter_provider=provider)
    upstream.route("/price", Fault.error(503), Fault.ok())
    registry = example_app_module.build_registry(upstream.url, upstream.url)
    app = example_app_module.create_app(registry, metrics_registry=metrics_registry)
    try:
        async with (
            registry,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://example"
            ) as http,
        ):
            quote = await http.get("/quote")
            stock = await http.get("/stock")
            scraped = await http.get("/metrics")
    finally:
        provider.shutdown()
    assert quote.json()["status"] == 200
    assert stock.json()["status"] == 200
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, s.labels.get("seawall_dependency"), s.labels.get("seawall_outcome")): s.value
        for f in text_string_to_metric_families(scraped.text)
        for s in f.samples
    }
    assert samples[("seawall_calls_total", "pricing", "success")] == 1
    assert samples[("seawall_calls_total", "inventory", "success")] == 1
    assert samples[("seawall_bulkhead_limit", "inventory", None)] == 3
    assert len(call_spans(spans.get_finished_spans(), "pricing")) == 1
    # The weather script is valid for FaultyUpstream.
    for _name, pricing, inventory in example_app_module.PHASES:
        assert isinstance(pricing, Fault)
        assert isinstance(inventory, Fault)
