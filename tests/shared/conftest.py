"""Fixtures for the shared-state tests: a real redis-server, replicas in one process.

The session's redis-server is started here (``shared_redis_server.py``) on a
free 127.0.0.1 port in a temp dir; each test gets a namespace of its own on
it. Fault tests start a server of their own (``own_redis``) to pause, slow,
kill or wipe. Without redis-server installed the tests are skipped, except
under ``CI=true``, where they fail.

Replicas are several Registry objects sharing one ManualClock with
``time="client"`` (the scripts run on that clock too), with a sync interval
so long that the background task never syncs on its own: each test syncs
when it means to (``await replica.sync()``), and moves time by hand.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from shared_helpers import T0, Cluster
from shared_redis_server import RedisServer, find_redis_server

from seawall.testing import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio is asyncio-only (test_config checks the error under trio)."""
    return "asyncio"


def _require_redis() -> str:
    binary = find_redis_server()
    if binary is None:
        message = "redis-server is not installed; .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests share it through their own namespaces."""
    server = RedisServer(_require_redis(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to pause, slow, kill or wipe."""
    server = RedisServer(_require_redis(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def cluster(
    redis_server: RedisServer, namespace: str, clock: ManualClock
) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(redis_server.url, namespace, clock, stack)


@pytest.fixture
async def faulty(
    own_redis: RedisServer, namespace: str, clock: ManualClock
) -> AsyncIterator[Cluster]:
    """Replicas on a redis-server of the test's own (``own_redis``), to break."""
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(own_redis.url, namespace, clock, stack)
