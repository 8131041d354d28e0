"""The shared fallback cache on a real Redis and a real HTTP upstream (FaultyUpstream).

A's answers reach B's failures; only for the same credentials, and only under a
cache_secret; nothing personal or secret ever reaches Redis.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from shared_helpers import until
from shared_redis_server import RedisServer

import seawall
from seawall._shared import SharedResponseCache
from seawall.redis import RedisState
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

SECRET = "0123456789abcdef-cache-secret"
POLICY = seawall.Policy(
    retry=None,
    breaker=None,
    fallback=seawall.Fallback(stale_if_error=600),
    shared=seawall.Shared(fallback=True),
)


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


class App:
    def __init__(self, registry: seawall.Registry) -> None:
        self.registry = registry
        self.client = registry.client("pay")
        cache = registry._get("pay").runtime.cache
        assert isinstance(cache, SharedResponseCache)
        self.cache = cache
        state = registry.state
        assert isinstance(state, RedisState)
        self.state = state

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(path, **kwargs)
        await response.aread()
        return response

    async def written(self) -> None:
        await until(lambda: self.cache._writer is None and not self.cache._pending)

    async def read_done(self) -> None:
        await until(lambda: self.cache._reads == 0)


@pytest.fixture
async def apps(
    redis_server: RedisServer, namespace: str, clock: ManualClock, upstream: FaultyUpstream
) -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(*, secret: str | None = None) -> App:
            state = RedisState(
                redis_server.url,
                namespace=namespace,
                time="client",
                clock=clock,
                sync_interval=30,
                lease_ttl=300,
                budget=1.0,
                cache_secret=secret,
            )
            registry = seawall.Registry(clock=clock, state=state)
            registry.add("pay", base_url=upstream.url, policy=POLICY)
            await stack.enter_async_context(registry)
            return App(registry)

        yield make


def shared_keys(server: RedisServer, namespace: str) -> list[bytes]:
    return list(server.client().scan_iter(match=f"seawall:{namespace}:c:*"))


async def test_b_answers_a_failure_with_what_a_cached(
    apps: Any, upstream: FaultyUpstream, redis_server: RedisServer, namespace: str
) -> None:
    a, b = await apps(), await apps()
    upstream.route("/items", Fault(body=b"fresh from A", headers={"Cache-Control": "max-age=60"}))
    assert (await a.get("/items")).text == "fresh from A"
    await a.written()
    assert len(shared_keys(redis_server, namespace)) == 1
    upstream.route("/items", Fault.error(503))
    # B's local tier misses: its first failure waits (within budget) on the shared one.
    first = await b.get("/items")
    assert first.status_code == 200
    assert first.text == "fresh from A"
    report = seawall.report_of(first)
    assert report is not None
    assert report.fallback == "cache"
    assert report.shared == "redis"
    assert "age" in first.headers
    assert b.state.counters.round_trips["cache_read"] == 1
    second = await b.get("/items")  # now from B's local tier: no second read
    assert second.text == "fresh from A"
    assert b.state.counters.round_trips["cache_read"] == 1


async def test_fetch_answers_the_first_failure_within_budget(
    apps: Any, upstream: FaultyUpstream
) -> None:
    a, b = await apps(), await apps()
    upstream.route("/items", Fault(body=b"v1"))
    await a.get("/items")
    await a.written()
    request = b.client.build_request("GET", "/items")
    cached = await b.cache.fetch(request, 600)
    assert cached is not None
    assert (await cached.aread()) == b"v1"


async def test_credentials_share_only_under_a_secret_and_only_with_the_same_ones(
    apps: Any, upstream: FaultyUpstream, redis_server: RedisServer, namespace: str
) -> None:
    plain = await apps()
    upstream.route("/me", Fault(body=b"alice's data"))
    await plain.get("/me", headers={"Authorization": "Bearer tok-alice-123"})
    await plain.written()
    assert shared_keys(redis_server, namespace) == []  # no secret: kept locally only

    a, b = await apps(secret=SECRET), await apps(secret=SECRET)
    await a.get("/me", headers={"Authorization": "Bearer tok-alice-123"})
    await a.get("/me", headers={"Cookie": "session=cookie-alice-456"})
    await a.written()
    assert len(shared_keys(redis_server, namespace)) == 2
    upstream.route("/me", Fault.error(503))
    for headers in (
        {"Authorization": "Bearer tok-alice-123"},
        {"Authorization": "Bearer tok-mallory-789"},
    ):
        await b.get("/me", headers=headers)
    alice = await b.get("/me", headers={"Authorization": "Bearer tok-alice-123"})
    assert alice.text == "alice's data"
    mallory = await b.get("/me", headers={"Authorization": "Bearer tok-mallory-789"})
    assert mallory.status_code == 503
    everything = b"".join(
        key + (redis_server.client().dump(key) or b"") for key in redis_server.client().scan_iter()
    )
    for secret in (b"tok-alice-123", b"cookie-alice-456", b"tok-mallory-789", SECRET.encode()):
        assert secret not in everything


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(headers={"Cache-Control": "no-store"}), id="no-store"),
        pytest.param(Fault(headers={"Cache-Control": "private, max-age=60"}), id="private"),
        pytest.param(Fault(headers={"Set-Cookie": "session=abc"}), id="set-cookie"),
        pytest.param(Fault(headers={"Vary": "*"}), id="vary-star"),
        pytest.param(Fault(body=b"x" * (256 * 1024 + 1)), id="over-256-KiB"),
    ],
)
async def test_never_shared(
    apps: Any, upstream: FaultyUpstream, redis_server: RedisServer, namespace: str, fault: Fault
) -> None:
    a = await apps(secret=SECRET)
    upstream.route("/thing", fault)
    await a.get("/thing", headers={"Authorization": "Bearer tok"})
    await a.written()
    assert shared_keys(redis_server, namespace) == []


async def test_writes_are_coalesced_per_key(apps: Any, upstream: FaultyUpstream) -> None:
    a = await apps()
    upstream.route("/items", Fault(body=b"same"))
    for _ in range(5):
        await a.get("/items")
        await a.written()
    assert a.state.counters.round_trips["cache_write"] == 1


async def test_degraded_the_cache_is_local_only(
    own_redis: RedisServer, namespace: str, clock: ManualClock, upstream: FaultyUpstream
) -> None:
    state = RedisState(own_redis.url, namespace=namespace, time="client", clock=clock)
    registry = seawall.Registry(clock=clock, state=state)
    registry.add("pay", base_url=upstream.url, policy=POLICY)
    async with registry:
        app = App(registry)
        own_redis.kill()
        for _ in range(3):
            await state.sync()
        assert state.status == "degraded"
        upstream.route("/items", Fault(body=b"v1"))
        await app.get("/items")
        upstream.route("/items", Fault.error(503))
        response = await app.get("/items")  # the local tier still answers
        assert response.text == "v1"
        assert state.counters.round_trips["cache_write"] == 0
        assert state.counters.round_trips["cache_read"] == 0
