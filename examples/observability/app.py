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
from typing import Annotated, Any

import anyio
import httpx
from fastapi import Depends, FastAPI, Response

import seawall
import seawall.asgi
import seawall.fastapi
from seawall.testing import Fault, FaultyUpstream

__all__ = ["PHASES", "build_registry", "create_app", "main", "setup_telemetry"]

PHASE_SECONDS = float(os.environ.get("PHASE_SECONDS", "30"))

#: (name, pricing's fault, inventory's fault), in turn, forever.
PHASES: list[tuple[str, Fault, Fault]] = [
    ("calm", Fault.latency(0.02), Fault.latency(0.05)),
    ("flaky", dataclasses.replace(Fault.error(503), ratio=0.33, seed=1), Fault.latency(0.05)),
    ("outage", Fault.error(503), Fault.latency(0.05)),
    ("slow", Fault.latency(0.02), dataclasses.replace(Fault.latency(0.6), ratio=0.8, seed=2)),
]


def build_registry(pricing_url: str, inventory_url: str) -> seawall.Registry:
    registry = seawall.Registry()
    registry.add(
        "pricing",
        base_url=pricing_url,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(attempt=1.0, total=3.0),
            retry=seawall.Retry(attempts=3, backoff=seawall.Backoff(initial=0.05, maximum=0.5)),
            breaker=seawall.CircuitBreaker(minimum_calls=10, window_size=20, open_duration=10.0),
            fallback=seawall.Fallback(
                default=httpx.Response(200, json={"price": None, "stale": True})
            ),
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
        ),
    )
    return registry


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
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    scraped = metrics_registry or REGISTRY
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
        return Response(generate_latest(scraped), media_type=CONTENT_TYPE_LATEST)

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


async def _weather(pricing: FaultyUpstream, inventory: FaultyUpstream) -> None:
    """Change the upstreams' behaviour every PHASE_SECONDS."""
    for name, pricing_fault, inventory_fault in itertools.cycle(PHASES):
        pricing.set_default(pricing_fault)
        inventory.set_default(inventory_fault)
        print(f"weather: {name}", flush=True)
        await anyio.sleep(PHASE_SECONDS)


async def _traffic(app: FastAPI, per_second: float = 10.0) -> None:
    """A steady load on the app's own routes, through its whole ASGI stack."""
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://example") as client,
        anyio.create_task_group() as tg,
    ):
        for n in itertools.count():
            tg.start_soon(client.get, "/stock" if n % 2 else "/quote")
            await anyio.sleep(1 / per_second)


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
                tg.start_soon(_weather, simulated[0], simulated[1])
            if os.environ.get("TRAFFIC", "1") != "0":
                tg.start_soon(_traffic, app)
            yield
            tg.cancel_scope.cancel()

    app = create_app(build_registry(pricing_url, inventory_url), lifespan=lifespan)
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
