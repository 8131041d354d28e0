"""The FastAPI example under a real uvicorn server: one hung dependency stays contained.

With the payments provider hung, requests that need only the catalog keep
their usual latency (payments has its own pool, bulkhead and breaker), and
once the payments breaker opens, ``/pay`` fails fast with a 503 problem
instead of tying a request up for the whole timeout.

This is a containment check, not a benchmark: the bound is generous (three
times the healthy maximum plus 50 ms); a shared pool or an unbounded wait
would blow through it by an order of magnitude (the hang lasts 0.5 s a try).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from example_shop_harness import Upstreams, merge

import seawall
from seawall.testing import Fault

HUNG_PAYS = 6
SAMPLES = 20

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


def pay(base_url: str, order_id: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        return client.post("/pay", json={"order_id": order_id, "amount_cents": 500})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def test_hung_payments_leave_the_catalog_alone_and_pay_fails_fast(
    upstreams: Upstreams, settings: dict[str, Any]
) -> None:
    from examples.fastapi_app.app import create_app

    config = merge(settings, {"dependencies": {"payments": PAYMENTS}})
    registry = seawall.Registry.from_config(config)
    app = create_app(registry=registry)
    items = json.dumps([{"sku": "tea"}]).encode()
    upstreams.catalog.route(
        "/items", Fault(body=items, headers={"content-type": "application/json"})
    )
    # Charges succeed; status checks (GET /charges/{id}) find no charge.
    upstreams.payments.set_default(Fault.error(404))
    upstreams.payments.route("/charges", Fault.ok())

    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10.0) as client:
        # -- healthy
        assert client.post("/pay", json={"order_id": "warm-up", "amount_cents": 1}).is_success
        catalog_latencies(client)  # warm up the connections on both sides
        healthy = catalog_latencies(client)

        # -- payments hung, charges in flight
        upstreams.payments.route("/charges", Fault.hang())
        charges_before = upstreams.payments.count("/charges")
        bulkhead = registry.bulkhead("payments")
        with ThreadPoolExecutor(max_workers=HUNG_PAYS) as pool:
            hung = [pool.submit(pay, base_url, f"hung-{i}") for i in range(HUNG_PAYS)]
            wait_until(
                lambda: upstreams.payments.count("/charges") >= charges_before + HUNG_PAYS,
                "the charges to reach the hung provider",
            )
            in_flight = bulkhead.statistics().in_use
            during = catalog_latencies(client)
            in_flight_after = bulkhead.statistics().in_use
            hung_answers = [future.result(timeout=10.0) for future in hung]

        # The whole measurement ran while the charges hung.
        assert in_flight == HUNG_PAYS
        assert in_flight_after > 0
        report = (
            f"healthy p50 {ms(statistics.median(healthy))} max {ms(max(healthy))}; "
            f"during the hang p50 {ms(statistics.median(during))} max {ms(max(during))}"
        )
        assert max(during) < 3 * max(healthy) + 0.050, report

        # Each hung charge went out and got no answer: never "failed", never "paid"
        # unverified. Its status check was refused by the now open breaker.
        for response in hung_answers:
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "pending_verification"

        # -- breaker open: /pay fails fast, and no charge is sent
        snapshot = client.get("/_resilience/").json()
        assert snapshot["dependencies"]["payments"]["breaker"]["state"] == "open"
        assert snapshot["dependencies"]["catalog"]["breaker"]["state"] == "closed"
        charges_sent = upstreams.payments.count("/charges")
        for i in range(5):
            started = time.perf_counter()
            response = client.post("/pay", json={"order_id": f"fast-{i}", "amount_cents": 1})
            elapsed = time.perf_counter() - started

            assert response.status_code == 503, response.text
            assert elapsed < 0.100, f"503 took {ms(elapsed)}"
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) >= 1
            problem = response.json()
            assert problem["reason"] == "circuit_open"
            assert problem["dependency"] == "payments"
            assert base_url not in response.text
            assert upstreams.payments.url not in response.text
        assert upstreams.payments.count("/charges") == charges_sent

        # -- and the catalog still answers as before
        assert max(catalog_latencies(client)) < 3 * max(healthy) + 0.050
