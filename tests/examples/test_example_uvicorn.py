"""The FastAPI example under a real uvicorn server: one hung dependency stays contained.

With the payments provider hung, ``/pay`` keeps its usual latency (it only
writes the order and enqueues the charge; the app's dispatcher sends it),
and so does ``/catalog`` (payments has its own pool, bulkhead and breaker).
The dispatcher keeps at most its ``concurrency`` charges in flight, and once
the payments breaker opens it stops sending them: they wait in the outbox.

This is a containment check, not a benchmark: the bound is generous (three
times the healthy maximum plus 50 ms); a request that waited on the provider
would blow through it by an order of magnitude (the hang lasts 0.5 s a try).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from example_shop_harness import Upstreams, merge

import seawall
from seawall.testing import Fault

SAMPLES = 20
#: The dispatcher's default: charges sent at once.
DISPATCH_CONCURRENCY = 8

#: Payments as in resilience.toml (bulkhead 20, breaker after 4 calls, retry
#: with the order id as idempotency key) with times cut to fit a test.
PAYMENTS = {
    "timeouts": {"attempt": 0.5, "total": 1.0},
    "retry": {"attempts": 2, "backoff": {"initial": 0.0, "maximum": 0.0}},
    "breaker": {
        "minimum_calls": 4,
        "window_size": 20,
        "failure_rate_threshold": 0.5,
        "open_duration": 30.0,
    },
}


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run *app* under uvicorn on a free loopback port, in a thread; yield its URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-shop", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 10.0
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < give_up, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.005)


def catalog_latencies(client: httpx.Client) -> list[float]:
    """Seconds taken by each of SAMPLES sequential ``GET /catalog``; each must succeed."""
    latencies = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = client.get("/catalog")
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["stale"] is False
    return latencies


def pay_latencies(client: httpx.Client, prefix: str) -> list[float]:
    """Seconds taken by each of SAMPLES sequential ``POST /pay``; each must be accepted."""
    latencies = []
    for i in range(SAMPLES):
        started = time.perf_counter()
        response = client.post("/pay", json={"order_id": f"{prefix}-{i}", "amount_cents": 500})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
    return latencies


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def test_hung_payments_slow_neither_pay_nor_the_catalog(
    upstreams: Upstreams, settings: dict[str, Any], tmp_path: Path
) -> None:
    from examples.fastapi_app.app import create_app

    config = merge(settings, {"dependencies": {"payments": PAYMENTS}})
    registry = seawall.Registry.from_config(config)
    app = create_app(registry=registry, database_url=f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    provider = upstreams.payments
    items = json.dumps([{"sku": "tea"}]).encode()
    upstreams.catalog.route(
        "/items", Fault(body=items, headers={"content-type": "application/json"})
    )

    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10.0) as client:
        # -- healthy: the app's own dispatcher charges what /pay accepts
        healthy_pay = pay_latencies(client, "healthy")
        wait_until(
            lambda: len(provider.charge_counts()) == SAMPLES, "the healthy orders to be charged"
        )
        assert client.get("/orders/healthy-0").json()["status"] == "paid"
        catalog_latencies(client)  # warm up the connections on both sides
        healthy_catalog = catalog_latencies(client)

        # -- payments hung: /pay answers as fast, the charges hang in the dispatcher
        provider.fault(Fault.hang())
        hung_pay = pay_latencies(client, "hung")
        bulkhead = registry.bulkhead("payments")
        wait_until(
            lambda: bulkhead.statistics().in_use == DISPATCH_CONCURRENCY,
            "the dispatcher's charges to hang at the provider",
        )
        during = catalog_latencies(client)
        in_flight_after = bulkhead.statistics().in_use

        report = (
            f"/pay healthy p50 {ms(statistics.median(healthy_pay))} max {ms(max(healthy_pay))}, "
            f"hung p50 {ms(statistics.median(hung_pay))} max {ms(max(hung_pay))}; "
            f"/catalog healthy p50 {ms(statistics.median(healthy_catalog))} "
            f"max {ms(max(healthy_catalog))}, during the hang p50 {ms(statistics.median(during))} "
            f"max {ms(max(during))}"
        )
        assert max(hung_pay) < 3 * max(healthy_pay) + 0.050, report
        assert in_flight_after > 0, "the catalog was measured after the hang was over"
        assert max(during) < 3 * max(healthy_catalog) + 0.050, report
        # Never more charges in flight than the dispatcher's concurrency.
        assert bulkhead.statistics().in_use <= DISPATCH_CONCURRENCY

        # -- the breaker opens: the dispatcher stops sending, /pay still accepts
        wait_until(
            lambda: registry.breaker("payments").state == "open",
            "the payments breaker to open",
            timeout=10.0,
        )
        snapshot = client.get("/_resilience/").json()
        assert snapshot["dependencies"]["payments"]["breaker"]["state"] == "open"
        assert snapshot["dependencies"]["catalog"]["breaker"]["state"] == "closed"
        for i in range(5):
            started = time.perf_counter()
            response = client.post("/pay", json={"order_id": f"open-{i}", "amount_cents": 1})
            elapsed = time.perf_counter() - started
            assert response.status_code == 202, response.text
            assert elapsed < 3 * max(healthy_pay) + 0.050, f"/pay took {ms(elapsed)}"
        order = client.get("/orders/open-0").json()
        assert order["status"] == "accepted"
        assert order["payment"]["state"] == "pending"  # waits in the outbox

        # -- and the catalog still answers as before
        assert max(catalog_latencies(client)) < 3 * max(healthy_catalog) + 0.050
