"""An attempt cut by the caller's own deadline is evidence against the
dependency only when it had a fair chance (``_engine.FAIR_CHANCE``)."""

from __future__ import annotations

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import seawall
from seawall.asgi import ResilienceMiddleware
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


def app_over(registry: seawall.Registry) -> Starlette:
    async def pay(request: Request) -> Response:
        answer = await registry.client("payments").get("/pay")
        return PlainTextResponse(str(answer.status_code))

    return Starlette(routes=[Route("/pay", pay)], middleware=[Middleware(ResilienceMiddleware)])


async def test_a_hung_upstream_still_opens_the_breaker_under_one_second_deadlines(
    upstream: FaultyUpstream,
) -> None:
    """(b) of issue 12, item 6: the attempt timeout (10 s) is longer than the
    inbound budget (1 s), yet the cuts count and the breaker opens."""
    upstream.route("/pay", Fault.hang())
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url)  # the default policy
    minimum = registry.breaker("payments").config.minimum_calls
    transport = httpx.ASGITransport(app=app_over(registry))
    statuses: list[int] = []
    async with registry, httpx.AsyncClient(transport=transport, base_url="http://app") as client:

        async def one() -> None:
            r = await client.get("/pay", headers={"Request-Timeout": "1s"})
            statuses.append(r.status_code)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(minimum):
                    tg.start_soon(one)
        assert statuses == [504] * minimum
        assert registry.breaker("payments").state == seawall.BreakerState.OPEN
        with anyio.fail_after(1):
            fast = await client.get("/pay", headers={"Request-Timeout": "1s"})
        assert fast.status_code == 503
    assert upstream.count("/pay") == minimum


async def test_cuts_by_a_tiny_inbound_deadline_are_neutral(upstream: FaultyUpstream) -> None:
    upstream.route("/pay", Fault.latency(0.3))
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url)
    minimum = registry.breaker("payments").config.minimum_calls
    async with registry:
        client = registry.client("payments")
        for _ in range(minimum + 5):
            with seawall.deadline(0.05), pytest.raises(seawall.DeadlineExceededError):
                await client.get("/pay")
        stats = registry.breaker("payments").statistics()
    assert stats.state == seawall.BreakerState.CLOSED
    assert stats.calls == 0  # none of them was recorded
