"""A steady load on the example app, from outside: ``TARGET`` (a base URL).

The compose stack's ``replicas`` profile points it at the proxy, which spreads
it over the replicas::

    TARGET=http://proxy:8080 RATE=16 python -m examples.observability.traffic

``RATE`` requests a second (10 by default), alternating ``/quote`` and ``/stock``.
"""

from __future__ import annotations

import os

import anyio
import httpx

from .app import traffic

__all__ = ["main"]


async def _run(target: str, rate: float) -> None:
    # One connection per request in flight, as many as the load needs; a
    # proxy sees each request on its own, whatever keeps the connections alive.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=target, limits=limits, timeout=10.0) as client:
        await traffic(client, rate)


def main() -> None:
    target = os.environ.get("TARGET", "http://127.0.0.1:8080")
    rate = float(os.environ.get("RATE", "10"))
    print(f"traffic: {rate:g} requests a second to {target}", flush=True)
    anyio.run(_run, target, rate)


if __name__ == "__main__":
    main()
