"""One replica of an app, run by uvicorn in its own process (the multi-process tests).

Its configuration comes as JSON in ``SHARED_APP``: the Redis URL, the
namespace, the upstream, the dependency's table (the TOML layout, ``shared``
included) and the state's timings. Endpoints:

* ``GET /call?path=/x``: one call to the upstream through the registry's client;
* ``GET /drive?rate=R&seconds=S&path=/x``: calls at R a second for S seconds,
  made here (so the test's own process is not the bottleneck); the counts;
* ``GET /state``: the registry's snapshot;
* ``/_resilience/``: seawall's status app (admin token ``ADMIN_TOKEN``), e.g.
  ``POST /_resilience/pay/breaker/force-open?scope=cluster``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import seawall
from seawall.asgi import status_app
from seawall.redis import RedisState

ADMIN_TOKEN = "shared-app-admin-token"

config = json.loads(os.environ["SHARED_APP"])
state = RedisState(
    config["redis"],
    namespace=config["namespace"],
    sync_interval=config.get("sync_interval", 0.1),
    lease_ttl=config.get("lease_ttl", 1.0),
    budget=config.get("budget", 0.05),
    command_timeout=config.get("command_timeout", 0.5),
)
registry = seawall.Registry.from_config(
    {"dependencies": {"pay": {"base_url": config["upstream"], **config["dependency"]}}},
    state=state,
)
client = registry.client("pay")


async def one(path: str) -> str:
    try:
        response = await client.get(path)
        await response.aread()
        return f"status-{response.status_code}"
    except seawall.SeawallError as exc:
        return exc.reason
    except Exception as exc:
        return type(exc).__name__


async def call(request: Request) -> JSONResponse:
    outcome = await one(request.query_params.get("path", "/"))
    breaker = registry.breakers("pay").get("")
    return JSONResponse({"outcome": outcome, "breaker": breaker and breaker.state.value})


async def drive(request: Request) -> JSONResponse:
    rate = float(request.query_params["rate"])
    seconds = float(request.query_params["seconds"])
    path = request.query_params.get("path", "/")
    counts: collections.Counter[str] = collections.Counter()
    tasks = set()
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

        async def run() -> None:
            counts[await one(path)] += 1

        task = asyncio.ensure_future(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    return JSONResponse(dict(counts))


async def snapshot(request: Request) -> JSONResponse:
    return JSONResponse(registry.snapshot())


app = Starlette(
    routes=[
        Route("/call", call),
        Route("/drive", drive),
        Route("/state", snapshot),
        # seawall's status app: POST /_resilience/pay/breaker/force-open?scope=cluster
        Mount("/_resilience", status_app(registry, admin_token=ADMIN_TOKEN)),
    ],
    lifespan=registry.lifespan,
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
