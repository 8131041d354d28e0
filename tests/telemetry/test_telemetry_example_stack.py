"""examples/observability: the compose stack's files parse and agree, the dashboard's
queries name what the Prometheus exporter really emits, and the example app serves it,
alone and as two replicas sharing state on a real redis-server (started here)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
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
FLEET = {"redis", "upstreams", "shop-1", "shop-2", "proxy", "traffic"}


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
    # Without a profile: the stack alone, for an app on the host.
    assert {n for n, s in services.items() if "profiles" not in s} == {
        "jaeger",
        "prometheus",
        "grafana",
    }
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert {p.split(":")[0].strip('"') for p in jaeger["ports"]} >= {"4317", "4318", "16686"}
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    prometheus = services["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    assert "9090:9090" in prometheus["ports"]
    assert "3000:3000" in services["grafana"]["ports"]


def test_the_replicas_profile_runs_a_fleet_on_redis_behind_a_round_robin_proxy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {n for n, s in services.items() if s.get("profiles") == ["replicas"]} == FLEET
    assert services["redis"]["image"].startswith("redis:")
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    # One image, built from the checkout, for the replicas, the upstreams and the load.
    apps = ("upstreams", "shop-1", "shop-2", "traffic")
    assert {services[n]["image"] for n in apps} == {"seawall-observability-app"}
    for name in apps:
        build = services[name]["build"]
        context = (STACK / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    dockerfile = (STACK / "Dockerfile").read_text()
    assert "COPY src ./src" in dockerfile
    assert "COPY examples ./examples" in dockerfile
    assert 'CMD ["python", "-m", "examples.observability.app"]' in dockerfile
    # Every module the services run exists.
    for name in apps:
        module = services[name].get("command", ["python", "-m", "examples.observability.app"])[2]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    # Both replicas: the same Redis, the same single fault source, the load from outside.
    upstreams = services["upstreams"]
    for replica in ("shop-1", "shop-2"):
        env = services[replica]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["PRICING_URL"] == "http://upstreams:9001"
        assert env["INVENTORY_URL"] == "http://upstreams:9002"
        assert env["TRAFFIC"] == "0"
        assert env["PORT"] == "8000"
        assert set(services[replica]["depends_on"]) == {"redis", "upstreams"}
    assert "environment" not in upstreams  # the upstreams' default ports: 9001, 9002
    assert services["traffic"]["environment"]["TARGET"] == "http://proxy:8080"
    # The proxy: round robin over both replicas, on the port the load targets.
    assert services["proxy"]["image"].startswith("nginx:")
    assert "8080:8080" in services["proxy"]["ports"]
    nginx = (STACK / "nginx.conf").read_text()
    (block,) = re.findall(r"upstream shop \{([^}]*)\}", nginx)
    servers = re.findall(r"server (\S+?)(?: weight=\d+)?;", block)
    assert servers == ["shop-1:8000", "shop-2:8000"]
    assert not re.search(r"\b(least_conn|ip_hash|hash|random)\b", block)  # round robin
    assert "listen 8080;" in nginx
    assert "proxy_pass http://shop;" in nginx


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    mounts = [v for s in compose["services"].values() for v in s.get("volumes", [])]
    assert mounts
    for mount in mounts:
        source = mount.split(":")[0]
        assert (STACK / source).exists(), mount


def test_prometheus_scrapes_the_app_on_the_host_and_each_replica(
    compose: dict[str, Any],
) -> None:
    config = load_yaml("prometheus.yml")
    host, fleet = config["scrape_configs"]
    assert host["metrics_path"] == fleet["metrics_path"] == "/metrics"
    assert host["static_configs"] == [{"targets": ["host.docker.internal:8000"]}]
    # Each replica directly, on the port its app listens on (not through the proxy).
    assert fleet["static_configs"] == [{"targets": ["shop-1:8000", "shop-2:8000"]}]
    for target in fleet["static_configs"][0]["targets"]:
        name, port = target.split(":")
        assert compose["services"][name]["environment"]["PORT"] == port


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


#: Labels Prometheus adds to every sample it scrapes (the target's).
TARGET_LABELS = {"instance", "job"}
#: The shared-state panels' metrics: seawall's shared-state instruments, and the
#: example app's gauges of its registry's snapshot.
SHARED = re.compile(r"^seawall_(shared|snapshot)_")


def _names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to."""
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    grouping = r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)"
    for group in re.findall(grouping, expr):
        labels |= {label.strip() for label in group.split(",")}
    bare = re.sub(grouping, "", re.sub(r"\{[^}]*\}", "", expr))
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    names = set(re.findall(r"\b(?:seawall|http_client)_\w+", bare))
    return names, labels


def _emitted(*texts: str) -> dict[str, set[str]]:
    """Each sample name in Prometheus texts, with the labels it carries."""
    emitted: dict[str, set[str]] = defaultdict(set)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                emitted[sample.name] |= {k for k, v in sample.labels.items() if v}
    return emitted


def _check_queries(queries: list[str], emitted: dict[str, set[str]]) -> set[str]:
    """Every name and label of *queries* is in *emitted*; the names used."""
    used = set()
    for expr in queries:
        names, labels = _names_and_labels(expr)
        assert names, expr
        used |= names
        for name in names:
            assert name in emitted, f"{name} (in {expr!r}) is not emitted"
        available = set().union(*(emitted[n] for n in names)) | TARGET_LABELS
        assert labels <= available, (expr, labels - available)
    return used


def _shared_panel(panel: dict[str, Any]) -> bool:
    return any(SHARED.match(n) for t in panel["targets"] for n in _names_and_labels(t["expr"])[0])


@pytest.mark.anyio
async def test_dashboard_queries_name_what_the_prometheus_exporter_emits(
    dashboard: dict[str, Any], upstream: FaultyUpstream
) -> None:
    emitted = _emitted(await prometheus_exposition(upstream, unique("dash")))
    queries = [t["expr"] for p in dashboard["panels"] if not _shared_panel(p) for t in p["targets"]]
    variable = dashboard["templating"]["list"][0]["query"]["query"]
    assert variable == "label_values(seawall_calls_total, seawall_dependency)"
    queries.append("seawall_calls_total{seawall_dependency=~'.+'}")
    used = _check_queries(queries, emitted)
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


# -- the Redis variant: two replicas on a real redis-server ----------------------------------

sys.path.insert(0, str(ROOT / "tests" / "shared"))
from shared_redis_server import RedisServer, find_redis_server  # noqa: E402

#: redis.asyncio is asyncio-only.
ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (free loopback port, temp dir, nothing on disk)."""
    binary = find_redis_server()
    if binary is None:
        message = "redis-server is not installed; .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Replica:
    """One replica of the example app in this process: its registry, app and client."""

    def __init__(
        self, module: Any, upstream: FaultyUpstream, state: Any, metrics: CollectorRegistry
    ) -> None:
        self.registry = module.build_registry(upstream.url, upstream.url, state=state)
        # /metrics: the process's OpenTelemetry metrics, then this replica's snapshot gauges.
        self.app = module.create_app(self.registry, metrics_registry=metrics)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://example"
        )

    def shared(self, dependency: str) -> dict[str, Any]:
        return self.registry.snapshot()["dependencies"][dependency]["shared"]  # type: ignore[no-any-return]

    async def scrape(self) -> dict[tuple[str, str | None], float]:
        """``/metrics`` as {(sample name, seawall_dependency): value}; a shared gauge's
        role or scope label joins the name (``seawall_shared_replicas:live``)."""
        text = (await self.http.get("/metrics")).text
        found: dict[tuple[str, str | None], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                kind = s.labels.get("seawall_shared_role") or s.labels.get("seawall_shared_scope")
                name = f"{s.name}:{kind}" if kind else s.name
                found[(name, s.labels.get("seawall_dependency"))] = s.value
        return found


async def until(predicate: Any, within: float = 5.0) -> float:
    """Poll (briefly) until *predicate* holds, a sync away at most; the time it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def fleet(
    example_app_module: Any, upstream: FaultyUpstream, redis_server: RedisServer
) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas of the Redis variant, sharing one upstream and one namespace."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    seawall.telemetry.configure(meter_provider=provider)
    namespace = f"example-{uuid.uuid4().hex[:8]}"
    # A short sync interval (the example's default is 0.25 s) keeps the test quick;
    # a generous budget keeps grants in time on a loaded machine.
    replicas = [
        Replica(
            example_app_module,
            upstream,
            example_app_module.redis_state(
                redis_server.url,
                namespace=namespace,
                sync_interval=0.05,
                lease_ttl=1.0,
                budget=0.25,
            ),
            registry,
        )
        for _ in range(2)
    ]
    try:
        async with AsyncExitStack() as stack:
            for replica in replicas:
                await stack.enter_async_context(replica.registry)
                await stack.enter_async_context(replica.http)
            # Both registered: each sees the other alive.
            await until(lambda: all(r.shared("pricing")["live_replicas"] == 2 for r in replicas))
            yield replicas[0], replicas[1]
    finally:
        provider.shutdown()


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_a_replica_that_made_no_call_follows_the_other_ones_open_breaker(
    fleet: tuple[Replica, Replica], upstream: FaultyUpstream
) -> None:
    a, b = fleet
    upstream.route("/price", Fault.error(503))
    # a's quotes fail (retried, then the fallback answers) until its breaker opens;
    # pricing's shared rate limit (6/s) refuses some of them on the way.
    opened = a.registry.breaker("pricing")
    deadline = time.monotonic() + 10
    while opened.state.value != "open":
        assert time.monotonic() < deadline, a.registry.snapshot()["dependencies"]["pricing"]
        quote = await a.http.get("/quote")
        assert quote.json()["status"] == 200  # the fallback's answer
        await anyio.sleep(0.02)  # paced: the limit would refuse a tight loop
    sent = upstream.count("/price")
    assert sent >= 10  # minimum_calls: a's own evidence
    assert a.shared("pricing")["cause"] == "local"

    followed = b.registry.breaker("pricing")
    took = await until(lambda: followed.state.value == "open")
    print(f"b followed a's open breaker {took:.3f} s later (sync interval 0.05 s)")
    assert b.shared("pricing")["cause"] == "shared"
    assert b.shared("pricing")["verdict"] == "open"
    # b answers from the fallback without a call of its own to pricing.
    quote = await b.http.get("/quote")
    assert quote.json() == {"quote": {"price": None, "stale": True}, "status": 200}
    assert upstream.count("/price") == sent
    # What the dashboard's shared breaker panel reads.
    seen = await b.scrape()
    assert seen[("seawall_shared_verdict", "pricing")] == 1
    assert seen[("seawall_snapshot_shared_following", "pricing")] == 1
    assert seen[("seawall_shared_replicas:live", "pricing")] == 2
    assert seen[("seawall_shared_replicas:tripped", "pricing")] == 1
    assert (await a.scrape())[("seawall_snapshot_shared_following", "pricing")] == 0


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_the_global_cap_holds_inventorys_calls_across_both_replicas(
    fleet: tuple[Replica, Replica], upstream: FaultyUpstream, example_app_module: Any
) -> None:
    cap = example_app_module.INVENTORY_GLOBAL_CAP
    latency = 0.3
    upstream.route("/stock", Fault.latency(latency))
    # 3 calls on each replica (each replica's own bulkhead holds 3): 6 against a cap of 4.
    answers: list[int] = []

    async def stock(replica: Replica) -> None:
        answers.append((await replica.http.get("/stock")).status_code)

    async with anyio.create_task_group() as tg:
        for replica in (*fleet, *fleet, *fleet):
            tg.start_soon(stock, replica)
    arrivals = sorted(r.at for r in upstream.requests("/stock"))
    peak = max(sum(1 for t in arrivals if at - latency < t <= at) for at in arrivals)
    # A grant later than budget lets a call go on under the local share, counted.
    local = sum(r.registry.snapshot()["state"]["local_decisions"].get("bulkhead", 0) for r in fleet)
    print(f"peak {peak} at the upstream (cap {cap}), answers {sorted(answers)}, local {local}")
    assert peak <= cap + local
    assert sorted(set(answers)) <= [200, 503]
    assert answers.count(200) == upstream.count("/stock")
    if not local:
        assert answers.count(503) >= 1  # 6 calls, 4 slots, a 0.2 s wait for one
    for replica in fleet:
        bulkhead = replica.shared("inventory")["bulkhead"]
        assert bulkhead["max_concurrent"] == cap
        assert bulkhead["cluster_slots"] <= cap


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_the_shared_panels_name_what_a_replica_emits(
    fleet: tuple[Replica, Replica],
    upstream: FaultyUpstream,
    redis_server: RedisServer,
    dashboard: dict[str, Any],
    example_app_module: Any,
) -> None:
    a, _ = fleet
    upstream.route("/stock", Fault.latency(0.01))
    await a.http.get("/stock")
    # Quotes back to back, past pricing's burst of 3: some are refused (rate_limited).
    for _ in range(8):
        await a.http.get("/quote")
    # Redis goes away: syncs fail (seawall.shared.errors) until the state is
    # degraded, and pricing's next call is admitted on local state
    # (seawall.shared.local_decisions), its reservation long expired.
    redis_server.kill()
    await until(lambda: a.registry.snapshot()["state"]["status"] == "degraded")
    quote = await a.http.get("/quote")
    assert quote.json()["status"] == 200
    assert a.registry.snapshot()["state"]["local_decisions"]["rate_limit"] >= 1
    emitted = _emitted((await a.http.get("/metrics")).text)

    panels = [p for p in dashboard["panels"] if _shared_panel(p)]
    assert {p["title"] for p in panels} == {
        "Shared breaker: verdict, live and tripped replicas",
        "Global bulkhead: slots held vs cap",
        "Shared rate limit: calls admitted by all replicas vs the limit",
        "Shared state: status and sync duration",
        "Shared state: round trips, errors and local decisions",
    }
    used = _check_queries([t["expr"] for p in panels for t in p["targets"]], emitted)
    # Every shared-state instrument of seawall, and every gauge of the app's collector.
    assert {re.sub(r"_(bucket|count|sum)$", "", n) for n in used if SHARED.match(n)} == {
        "seawall_shared_state",
        "seawall_shared_sync_duration_seconds",
        "seawall_shared_errors_total",
        "seawall_shared_round_trips_total",
        "seawall_shared_local_decisions_total",
        "seawall_shared_verdict",
        "seawall_shared_replicas",
        "seawall_shared_bulkhead_slots",
    } | {
        f"seawall_snapshot_{name}"
        for name, _, _ in example_app_module.SnapshotCollector.GAUGES
        # This replica's own figures, for /_resilience readers rather than a fleet's graphs.
        if name not in ("shared_rate_limit_pocket", "shared_bulkhead_in_use")
    }
