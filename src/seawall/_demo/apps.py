"""The demo's shop app, twice: through one shared httpx client, and through seawall.

Both variants serve ``/pay`` (a charge on payments) and ``/catalog`` (the catalog's items), and ``/_stats`` with
what each saw of its dependencies.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import seawall
from seawall.asgi import ResilienceMiddleware, status_app

_order = itertools.count(1)


def _plain_outcome(exc: BaseException | None, response: httpx.Response | None) -> str:
    if response is not None:
        return "success" if response.status_code < 400 else "http_error"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    return "transport_error"


def plain_app(upstream: str) -> Starlette:
    """The app as it is usually written: one shared ``httpx.AsyncClient`` for everything."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    client = httpx.AsyncClient(base_url=upstream)  # httpx defaults: 100 connections, 5 s timeouts

    async def call(dependency: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            outcomes[dependency][_plain_outcome(exc, None)] += 1
            raise
        outcomes[dependency][_plain_outcome(None, response)] += 1
        return response

    async def pay(request: Request) -> JSONResponse:
        order = f"order-{next(_order)}"
        try:
            charge = await call("payments", "POST", "/charges", json={"order": order, "amount": 42})
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        if charge.status_code >= 400:
            return JSONResponse({"error": "payment failed"}, status_code=502)
        return JSONResponse({"order": order, "status": "paid"})

    async def catalog(request: Request) -> JSONResponse:
        try:
            items = await call("catalog", "GET", "/items")
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        if items.status_code >= 400:
            return JSONResponse({"error": "catalog failed"}, status_code=502)
        return JSONResponse({"items": items.json(), "stale": False})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(
            {"dependencies": {d: {"outcomes": dict(c)} for d, c in outcomes.items()}}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with client:
            yield

    return Starlette(
        routes=[
            Route("/pay", pay, methods=["POST"]),
            Route("/catalog", catalog),
            Route("/_stats", stats),
        ],
        lifespan=lifespan,
    )


def seawall_registry(upstream: str, catalog: str | None = None) -> seawall.Registry:
    """The demo's policies, as a user would write them (see docs/).

    ``catalog`` is the catalog's own base URL where it differs from payments'
    (bench/blast_radius.py uses these same policies).
    """
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(connect=1.0, read=2.0, attempt=2.0, total=3.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.05, maximum=0.5)),
            # The limit follows the provider's latency: up to 100 charges at once
            # while it answers quickly, down to 10 when attempts time out. A
            # provider that is three times slower than usual still gets its
            # charges: the shop's own busy CPU slows answers that much.
            bulkhead=seawall.Bulkhead(
                max_concurrent=100,
                adaptive=seawall.AdaptiveLimit(min_limit=10, initial=50, tolerance=3.0),
            ),
            # The breaker opens on timeouts and gateway errors: a provider that
            # answers 500 at once costs the shop nothing to ask (the retry budget
            # bounds the extra load), and a breaker still open when it recovers
            # would refuse the first charges that could go through.
            breaker=seawall.CircuitBreaker(
                failure_rate_threshold=0.5,
                window_size=20,
                minimum_calls=10,
                open_duration=5.0,
                half_open_calls=3,
                failure_statuses=frozenset({502, 503, 504}),
            ),
            pool=seawall.Pool(max_connections=100, max_keepalive=100),
        ),
    )
    registry.add(
        "catalog",
        base_url=catalog or upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(connect=1.0, read=1.0, attempt=1.0, total=2.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.02, maximum=0.2)),
            bulkhead=seawall.Bulkhead(max_concurrent=50),
            breaker=seawall.CircuitBreaker(minimum_calls=10, window_size=20, open_duration=5.0),
            fallback=seawall.Fallback(stale_if_error=300),
            pool=seawall.Pool(max_connections=50, max_keepalive=50),
        ),
    )
    return registry


def _min_rtt_ms(bulkhead: dict[str, Any] | None) -> float | None:
    """An adaptive bulkhead's minimum RTT estimate, in milliseconds (None otherwise)."""
    adaptive = (bulkhead or {}).get("adaptive") or {}
    min_rtt = adaptive.get("min_rtt")
    return None if min_rtt is None else round(1000 * min_rtt, 1)


def seawall_app(upstream: str) -> Starlette:
    """The same app with seawall: a client per dependency, each with its own policy."""
    registry = seawall_registry(upstream)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    retries: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()

    def count(obj: object) -> None:
        report = seawall.report_of(obj)
        if report is not None:
            outcomes[report.dependency][report.outcome] += 1
            retries[report.dependency] += len(report.retries)
            if report.fallback:
                fallbacks[report.dependency] += 1

    async def pay(request: Request) -> JSONResponse:
        order = f"order-{next(_order)}"
        payments = registry.client("payments")
        try:
            charge = await payments.post(
                "/charges", json={"order": order, "amount": 42}, idempotency_key=order
            )
        except seawall.OutcomeUnknownError as exc:
            count(exc)
            # Verify before telling the customer anything (see docs/http-errors.md).
            return JSONResponse({"order": order, "status": "pending verification"}, status_code=202)
        except Exception as exc:
            count(exc)
            raise  # ResilienceMiddleware answers 503/504 with a problem document
        count(charge)
        if charge.status_code >= 400:
            return JSONResponse({"error": "payment failed"}, status_code=502)
        return JSONResponse({"order": order, "status": "paid"})

    async def catalog(request: Request) -> JSONResponse:
        try:
            items = await registry.client("catalog").get("/items")
        except Exception as exc:
            count(exc)
            raise
        count(items)
        if items.status_code >= 400:
            return JSONResponse({"error": "catalog failed"}, status_code=502)
        report = seawall.report_of(items)
        return JSONResponse({"items": items.json(), "stale": bool(report and report.fallback)})

    async def stats(request: Request) -> JSONResponse:
        snapshot = registry.snapshot()["dependencies"]
        return JSONResponse(
            {
                "dependencies": {
                    name: {
                        "outcomes": dict(outcomes[name]),
                        "retries": retries[name],
                        "fallbacks": fallbacks[name],
                        "breaker": (snapshot[name]["breaker"] or {}).get("state"),
                        "bulkhead_in_use": (snapshot[name]["bulkhead"] or {}).get("in_use"),
                        "bulkhead_limit": (snapshot[name]["bulkhead"] or {}).get("limit"),
                        "bulkhead_min_rtt_ms": _min_rtt_ms(snapshot[name]["bulkhead"]),
                    }
                    for name in registry.names
                }
            }
        )

    return Starlette(
        routes=[
            Route("/pay", pay, methods=["POST"]),
            Route("/catalog", catalog),
            Route("/_stats", stats),
            Mount("/_resilience", status_app(registry)),
        ],
        middleware=[Middleware(ResilienceMiddleware, registry=registry, deadline=10.0)],
        lifespan=registry.lifespan,
    )
