"""An app to watch seawall's telemetry in Jaeger and Grafana.

Run it from the repository root, with the stack of docker-compose.yml up::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python -m examples.observability.app

It serves on port 8000 (``PORT``):

* ``GET /quote``: a price from the *pricing* dependency (retries, a breaker,
  a fallback answer when pricing is down);
* ``GET /stock``: a count from the *inventory* dependency (a bulkhead of 3
  and a short attempt timeout);
* ``GET /metrics``: Prometheus text, scraped by the stack's Prometheus;
* ``GET /_resilience/``: the breakers' and bulkheads' figures as JSON.

Both dependencies are a :class:`~seawall.testing.FaultyUpstream` in this
process, whose "weather" changes every ``PHASE_SECONDS``: calm, flaky (a third
of pricing's answers are 503), outage (pricing answers only 503: its breaker
opens) and slow (inventory answers late: attempt timeouts, a full bulkhead).
Point ``PRICING_URL`` and ``INVENTORY_URL`` at real services to skip it. A
built-in load of a few requests a second keeps the graphs moving (``TRAFFIC=0``
turns it off).

With ``REDIS_URL`` set, the app is one replica of a fleet sharing state on
Redis (:func:`build_registry` with a ``RedisState``): pricing's breaker follows
the replicas' verdict, its rate limit holds for the fleet, its fallback cache
is shared, and inventory's calls in flight are capped across replicas. The
compose file's ``replicas`` profile runs two of them behind nginx, with the
upstreams in a service of their own (``upstreams.py``) and the load in another
(``traffic.py``). ``/metrics`` then also carries the registry's shared figures
(``seawall_snapshot_*``, :class:`SnapshotCollector`).

seawall itself configures nothing: :func:`setup_telemetry` is the app's, and
sets the OpenTelemetry providers and structlog up as any app would.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import httpx
from fastapi import Depends, FastAPI, Response

import seawall
import seawall.asgi
import seawall.fastapi
from seawall.testing import Fault, FaultyUpstream

if TYPE_CHECKING:
    from seawall.redis import RedisState

__all__ = [
    "PHASES",
    "SnapshotCollector",
    "build_registry",
    "create_app",
    "main",
    "redis_state",
    "setup_telemetry",
    "weather",
]

PHASE_SECONDS = float(os.environ.get("PHASE_SECONDS", "30"))

#: (name, pricing's fault, inventory's fault), in turn, forever.
PHASES: list[tuple[str, Fault, Fault]] = [
    ("calm", Fault.latency(0.02), Fault.latency(0.05)),
    ("flaky", dataclasses.replace(Fault.error(503), ratio=0.33, seed=1), Fault.latency(0.05)),
    ("outage", Fault.error(503), Fault.latency(0.05)),
    ("slow", Fault.latency(0.02), dataclasses.replace(Fault.latency(0.6), ratio=0.8, seed=2)),
]


#: Pricing's rate limit in the Redis variant, for the whole fleet (the compose
#: stack's load sends about 8 quotes a second).
PRICING_RATE = seawall.RateLimit(rate=6, burst=3)
#: Inventory's calls in flight across the fleet in the Redis variant (each
#: replica's own bulkhead holds 3).
INVENTORY_GLOBAL_CAP = 4


def redis_state(url: str, *, namespace: str = "seawall-example", **options: Any) -> RedisState:
    """The state backend of the Redis variant (``options``: RedisState's timings)."""
    from seawall.redis import RedisState

    return RedisState(url=url, namespace=namespace, **options)


def build_registry(
    pricing_url: str, inventory_url: str, *, state: RedisState | None = None
) -> seawall.Registry:
    """The example's two dependencies; with a *state*, one replica of a fleet.

    The Redis variant keeps every local setting and adds the shared parts:
    pricing's breaker follows the replicas' verdict (a quorum of one: with two
    replicas, one tripped replica is enough for the other to follow while its
    own evidence is thin), a rate limit for the whole fleet, and a shared
    stale-if-error tier under its fallback; inventory gets a cap of
    :data:`INVENTORY_GLOBAL_CAP` calls in flight across replicas.
    """
    shared = state is not None
    registry = seawall.Registry(state=state)
    registry.add(
        "pricing",
        base_url=pricing_url,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(attempt=1.0, total=3.0),
            retry=seawall.Retry(attempts=3, backoff=seawall.Backoff(initial=0.05, maximum=0.5)),
            breaker=seawall.CircuitBreaker(minimum_calls=10, window_size=20, open_duration=10.0),
            rate_limit=PRICING_RATE if shared else None,
            fallback=seawall.Fallback(
                default=httpx.Response(200, json={"price": None, "stale": True}),
                # The shared cache tier needs something to keep: a quote one
                # replica got is served by the other while pricing is out.
                stale_if_error=300 if shared else None,
            ),
            shared=seawall.Shared(breaker="advisory", quorum=1, rate_limit=True, fallback=True)
            if shared
            else None,
        ),
    )
    registry.add(
        "inventory",
        base_url=inventory_url,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(attempt=0.4, total=1.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.05)),
            bulkhead=seawall.Bulkhead(max_concurrent=3, max_wait=0.2),
            breaker=None,
            shared=seawall.Shared(
                bulkhead=seawall.GlobalBulkhead(max_concurrent=INVENTORY_GLOBAL_CAP)
            )
            if shared
            else None,
        ),
    )
    return registry


class SnapshotCollector:
    """The registry's shared figures as Prometheus gauges, read at each scrape.

    seawall's OpenTelemetry instruments cover the shared state's health
    (``seawall.shared.state``, ``seawall.shared.sync.duration``, errors, round
    trips, local decisions) and what the replicas agreed on (the verdict, the
    live and tripped replicas, the global bulkhead's slots: see
    docs/shared-state.md). The rest of ``registry.snapshot()`` (whether this
    replica follows the verdict, the rate limit's settings and pocket) this
    collector turns into ``seawall_snapshot_*`` gauges labelled
    ``seawall_dependency``. A registry without shared state yields none.
    """

    #: (gauge name, help, path in a dependency's ``"shared"`` entry).
    GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        (
            "shared_following",
            "1 while this replica's breaker is open because it followed the verdict.",
            ("cause",),
        ),
        (
            "shared_bulkhead_in_use",
            "This replica's calls in flight under the global cap.",
            ("bulkhead", "in_use"),
        ),
        (
            "shared_rate_limit_rate",
            "The fleet's rate limit, in calls a second.",
            ("rate_limit", "rate"),
        ),
        (
            "shared_rate_limit_pocket",
            "Tokens this replica holds in reserve.",
            ("rate_limit", "pocket"),
        ),
    )

    def __init__(self, registry: seawall.Registry) -> None:
        self.registry = registry

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        snapshot = self.registry.snapshot()
        if "state" not in snapshot:
            return
        families = {
            name: GaugeMetricFamily(f"seawall_snapshot_{name}", text, labels=["seawall_dependency"])
            for name, text, _ in self.GAUGES
        }
        for dependency, entry in sorted(snapshot["dependencies"].items()):
            shared = entry.get("shared")
            if not shared:
                continue
            for name, _, path in self.GAUGES:
                value = _value(shared, entry, path)
                if value is not None:
                    families[name].add_metric([dependency], value)
        yield from (f for f in families.values() if f.samples)


def _value(shared: dict[str, Any], entry: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """One gauge's value from a dependency's snapshot entry (None: not there)."""
    if path == ("verdict",):
        verdict = shared.get("verdict")
        return None if verdict is None else float(verdict == "open")
    if path == ("cause",):
        return float(
            (entry.get("breaker") or {}).get("state") == "open" and shared.get("cause") == "shared"
        )
    if path == ("rate_limit", "rate"):
        local = entry.get("rate_limit")
        return None if "rate_limit" not in shared or not local else local["rate"] / local["per"]
    found: Any = shared
    for key in path:
        if not isinstance(found, dict) or key not in found:
            return None
        found = found[key]
    return float(found)


Pricing = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("pricing"))]
Inventory = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("inventory"))]


def create_app(
    registry: seawall.Registry,
    *,
    metrics_registry: Any = None,
    lifespan: Any = None,
) -> FastAPI:
    """The app: its routes, seawall's middleware, ``/metrics`` and ``/_resilience``.

    ``metrics_registry`` is the prometheus_client registry ``/metrics`` serves
    (its global one by default).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    scraped = metrics_registry or REGISTRY
    # The shared figures of this app's registry, in a collector registry of
    # their own (two apps in one process would clash in the global one).
    shared_figures = CollectorRegistry(auto_describe=False)
    shared_figures.register(SnapshotCollector(registry))
    app = FastAPI(title="seawall observability example", lifespan=lifespan)
    seawall.fastapi.install(app, registry, deadline=5.0)

    @app.get("/quote")
    async def quote(pricing: Pricing) -> dict[str, Any]:
        answer = await pricing.get("/price", params={"sku": "tea"})
        return {"quote": answer.json(), "status": answer.status_code}

    @app.get("/stock")
    async def stock(inventory: Inventory) -> dict[str, Any]:
        answer = await inventory.get("/stock", params={"sku": "tea"})
        return {"stock": answer.json(), "status": answer.status_code}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        text = generate_latest(scraped) + generate_latest(shared_figures)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    app.mount("/_resilience", seawall.asgi.status_app(registry))
    return app


def setup_telemetry(app: FastAPI, service_name: str = "seawall-example") -> None:
    """The app's telemetry: OTLP traces (when OTEL_EXPORTER_OTLP_ENDPOINT is set),
    Prometheus metrics, JSON logs; then the server spans of FastAPI."""
    import structlog
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # The exporter appends /v1/traces to the endpoint itself.
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    FastAPIInstrumentor.instrument_app(app, excluded_urls="/metrics,/_resilience")


async def weather(pricing: FaultyUpstream, inventory: FaultyUpstream) -> None:
    """Change the upstreams' behaviour every PHASE_SECONDS, forever."""
    for name, pricing_fault, inventory_fault in itertools.cycle(PHASES):
        pricing.set_default(pricing_fault)
        inventory.set_default(inventory_fault)
        print(f"weather: {name}", flush=True)
        await anyio.sleep(PHASE_SECONDS)


async def traffic(client: httpx.AsyncClient, per_second: float = 10.0) -> None:
    """A steady load on the app's routes, alternating /quote and /stock."""
    async with anyio.create_task_group() as tg:
        for n in itertools.count():
            tg.start_soon(_get, client, "/stock" if n % 2 else "/quote")
            await anyio.sleep(1 / per_second)


async def _get(client: httpx.AsyncClient, path: str) -> None:
    try:
        await client.get(path)
    except httpx.HTTPError as exc:  # a replica restarting behind the proxy
        print(f"traffic: {path}: {type(exc).__name__}", flush=True)


async def _own_traffic(client: httpx.AsyncClient) -> None:
    async with client:
        await traffic(client)


def main() -> None:
    import uvicorn

    pricing_url = os.environ.get("PRICING_URL")
    inventory_url = os.environ.get("INVENTORY_URL")
    simulated: list[FaultyUpstream] = []
    if not (pricing_url and inventory_url):
        simulated = [FaultyUpstream(), FaultyUpstream()]
        for upstream in simulated:
            upstream.start()
        pricing_url, inventory_url = simulated[0].url, simulated[1].url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            if simulated:
                tg.start_soon(weather, simulated[0], simulated[1])
            if os.environ.get("TRAFFIC", "1") != "0":
                # Through the app's own ASGI stack, so the calls get server spans too.
                own = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://example"
                )
                tg.start_soon(_own_traffic, own)
            yield
            tg.cancel_scope.cancel()

    redis_url = os.environ.get("REDIS_URL")
    state = redis_state(redis_url) if redis_url else None
    app = create_app(build_registry(pricing_url, inventory_url, state=state), lifespan=lifespan)
    setup_telemetry(app)
    try:
        # 0.0.0.0: Prometheus scrapes from a container (host.docker.internal).
        uvicorn.run(
            app,
            host=os.environ.get("HOST", "0.0.0.0"),
            port=int(os.environ.get("PORT", "8000")),
            log_level="warning",
        )
    finally:
        for upstream in simulated:
            upstream.stop()


if __name__ == "__main__":
    main()
