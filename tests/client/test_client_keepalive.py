"""Keep-alive hygiene: a pooled connection the server gave up on is never a failure
of the dependency, and never reused past the server's own ``Keep-Alive: timeout``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn

import seawall
from seawall import OutcomeUnknownError, Policy
from seawall._compat import pool_connections
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


async def test_a_reused_connection_reset_before_any_answer_is_resent_at_once(
    upstream: FaultyUpstream,
) -> None:
    # The second request goes out on the first one's pooled connection, which
    # the server then drops before answering: a stale connection.
    upstream.route("/x", Fault.ok(), Fault.reset_connection(), Fault.ok())
    breaker = seawall.CircuitBreaker(minimum_calls=1, failure_rate_threshold=1.0, window_size=1)
    async with seawall.ResilientClient(
        "ka", base_url=upstream.url, policy=Policy(retry=None, breaker=breaker)
    ) as client:
        assert (await client.get("/x")).status_code == 200
        response = await client.get("/x")
        assert response.status_code == 200
        report = seawall.report_of(response)
        assert report is not None
        # Resent once without a Retry policy, said so, and not held against the upstream.
        assert (report.attempts, report.retries) == (2, ("stale_connection",))
        assert client.breaker.state.value == "closed"
    assert upstream.count("/x") == 3


async def test_a_keyless_post_on_a_stale_connection_stays_unknown(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/pay", Fault.ok(), Fault.reset_connection())
    async with seawall.ResilientClient(
        "ka", base_url=upstream.url, policy=Policy(breaker=None)
    ) as client:
        assert (await client.post("/pay", json={})).status_code == 200
        with pytest.raises(OutcomeUnknownError):
            await client.post("/pay", json={})
    # RFC 9110, 9.2.2: a non-idempotent request is not resent automatically.
    assert upstream.count("/pay") == 2


async def test_a_servers_keep_alive_timeout_shortens_the_pooled_connections_life(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/short", Fault(headers={"Keep-Alive": "timeout=2"}))
    async with seawall.ResilientClient("ka", base_url=upstream.url, policy=Policy()) as client:
        assert (await client.get("/short")).status_code == 200
        connections = pool_connections(client.resilient_transport.inner)
        assert connections is not None
        assert len(connections) == 1
        # keepalive_expiry is 5 s by default: the server's 2 s (less a margin) wins.
        left = connections[0]._connection._expire_at - time.monotonic()
        assert 0 < left <= 1.5


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _serve_closing_idle_after(seconds: int) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(
            _app, host="127.0.0.1", port=0, log_level="warning", timeout_keep_alive=seconds
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def closing_server() -> Iterator[str]:
    yield from _serve_closing_idle_after(1)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_requests_spaced_around_the_servers_idle_timeout_never_fail(
    closing_server: str,
) -> None:
    """The issue's scenario: the server closes idle connections after 1 s, and
    GETs come 1.0-1.2 s apart, racing that close. None may fail."""
    rng = random.Random(7)
    stale = 0
    async with seawall.ResilientClient(
        "ka", base_url=closing_server, policy=Policy(retry=None)
    ) as client:
        for _ in range(60):
            response = await client.get("/")
            assert response.status_code == 200
            report = seawall.report_of(response)
            assert report is not None
            stale += report.retries.count("stale_connection")
            await anyio.sleep(1.0 + rng.random() * 0.2)  # the spacing is the scenario
    print(f"stale connections resent: {stale} of 60")
