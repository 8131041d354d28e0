"""The blast-radius benchmark's app, three ways (run as a child process).

``python bench/blast_apps.py VARIANT PAYMENTS_URL CATALOG_URL``: serves
``POST /pay`` (a charge on payments) and ``GET /catalog`` (the catalog's
items) on a free loopback port, prints ``READY <port>``, and serves until
terminated.

* ``plain``: one shared ``httpx.AsyncClient`` with httpx's defaults.
* ``peers``: a hand-assembled stack as people write it today: tenacity
  retries, an aiobreaker circuit breaker and an anyio CapacityLimiter around
  one shared client, with asyncio timeouts.
* ``seawall``: a ResilientClient per dependency with the policy from docs/.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import socket
import sys
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_orders = itertools.count(1)


def plain(payments: str, catalog: str) -> Starlette:
    client = httpx.AsyncClient()

    async def pay(request: Request) -> JSONResponse:
        try:
            r = await client.post(f"{payments}/charges", json={"order": next(_orders)})
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        return JSONResponse(
            {"status": r.status_code}, status_code=200 if r.status_code < 400 else 502
        )

    async def items(request: Request) -> JSONResponse:
        try:
            r = await client.get(f"{catalog}/items")
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        return JSONResponse(
            {"status": r.status_code}, status_code=200 if r.status_code < 400 else 502
        )

    return Starlette(routes=[Route("/pay", pay, methods=["POST"]), Route("/catalog", items)])


def peers(payments: str, catalog: str) -> Starlette:
    import aiobreaker
    import tenacity

    client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0))
    breakers = {
        "payments": aiobreaker.CircuitBreaker(
            fail_max=10, timeout_duration=datetime.timedelta(seconds=5)
        ),
        "catalog": aiobreaker.CircuitBreaker(
            fail_max=10, timeout_duration=datetime.timedelta(seconds=5)
        ),
    }
    limiters = {"payments": anyio.CapacityLimiter(20), "catalog": anyio.CapacityLimiter(50)}

    async def call(dep: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def once() -> httpx.Response:
            async with limiters[dep], asyncio.timeout(2.0):
                r = await client.request(method, url, **kwargs)
                if r.status_code >= 500:
                    r.raise_for_status()
                return r

        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(2),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=0.5),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, TimeoutError)),
            reraise=True,
        ):
            with attempt:
                return await breakers[dep].call_async(once)
        raise AssertionError("unreachable")

    async def pay(request: Request) -> JSONResponse:
        try:
            await call("payments", "POST", f"{payments}/charges", json={"order": next(_orders)})
        except aiobreaker.CircuitBreakerError:
            return JSONResponse({"error": "circuit open"}, status_code=503)
        except (httpx.HTTPError, TimeoutError) as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        return JSONResponse({"status": "paid"})

    async def items(request: Request) -> JSONResponse:
        try:
            await call("catalog", "GET", f"{catalog}/items")
        except aiobreaker.CircuitBreakerError:
            return JSONResponse({"error": "circuit open"}, status_code=503)
        except (httpx.HTTPError, TimeoutError) as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/pay", pay, methods=["POST"]), Route("/catalog", items)])


def seawall_variant(payments: str, catalog: str) -> Starlette:
    import seawall
    from seawall._demo.apps import seawall_registry
    from seawall.asgi import ResilienceMiddleware

    # The same policies as `seawall demo`'s.
    registry = seawall_registry(payments, catalog)

    async def pay(request: Request) -> JSONResponse:
        order = f"o{next(_orders)}"
        try:
            r = await registry.client("payments").post(
                "/charges", json={"order": order}, idempotency_key=order
            )
        except seawall.OutcomeUnknownError:
            return JSONResponse({"status": "pending"}, status_code=202)
        return JSONResponse(
            {"status": r.status_code}, status_code=200 if r.status_code < 400 else 502
        )

    async def items(request: Request) -> JSONResponse:
        r = await registry.client("catalog").get("/items")
        return JSONResponse(
            {"status": r.status_code}, status_code=200 if r.status_code < 400 else 502
        )

    return Starlette(
        routes=[Route("/pay", pay, methods=["POST"]), Route("/catalog", items)],
        middleware=[Middleware(ResilienceMiddleware, registry=registry, deadline=10.0)],
        lifespan=registry.lifespan,
    )


VARIANTS = {"plain": plain, "peers": peers, "seawall": seawall_variant}


def main() -> None:
    import structlog
    import uvicorn

    # An app configures its logging: failures at info, no per-call success lines.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
    variant, payments, catalog = sys.argv[1:4]
    app = VARIANTS[variant](payments, catalog)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    uvicorn.Server(
        uvicorn.Config(app, log_level="error", access_log=False, timeout_graceful_shutdown=1)
    ).run(sockets=[sock])


if __name__ == "__main__":
    main()
