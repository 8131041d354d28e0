"""The blast-radius benchmark's load generator (a separate process).

``python bench/blast_load.py APP_URL DURATION PAY_CLIENTS CATALOG_CLIENTS THINK``
drives ``POST /pay`` and ``GET /catalog`` with closed-loop clients for
DURATION seconds (each client: request, wait THINK seconds, repeat; requests
time out after 15 s) and prints every sample as JSON: ``[[start, route,
seconds, status], ...]`` with start relative to the run's start.
"""

from __future__ import annotations

import json
import ssl
import sys
import time

import anyio
import httpx


async def main(url: str, duration: float, pay: int, catalog: int, think: float) -> None:
    samples: list[tuple[float, str, float, str]] = []
    start = time.monotonic()
    end = start + duration
    # A connection per simulated user: one pool shared by a hundred busy
    # requests costs httpcore time quadratic in their number (encode/httpcore#1035),
    # and the generator would end up measuring itself.
    tls = ssl.create_default_context()  # unused on http://, built once instead of per client

    async def client_loop(route: str, offset: float) -> None:
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=15.0,
            verify=tls,
        ) as http:
            await anyio.sleep(offset)
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    if route == "/pay":
                        r = await http.post(url + route)
                    else:
                        r = await http.get(url + route)
                    status = str(r.status_code)
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError:
                    status = "error"
                samples.append((t0 - start, route, time.monotonic() - t0, status))
                await anyio.sleep(think)

    async with anyio.create_task_group() as tg:
        for i in range(pay):
            tg.start_soon(client_loop, "/pay", think * i / max(pay, 1))
        for i in range(catalog):
            tg.start_soon(client_loop, "/catalog", think * i / max(catalog, 1))
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    url, duration, pay, catalog, think = sys.argv[1:6]
    anyio.run(main, url, float(duration), int(pay), int(catalog), float(think))
