"""Fixtures for the outbox tests: SQLite and a real PostgreSQL, each running every test.

PostgreSQL is started here (initdb + pg_ctl on a free loopback port, see
outbox_pg_server.py), once per session, with one database per test module;
each test gets a table of its own. Without PostgreSQL installed the
PostgreSQL half is skipped, except under ``CI=true``, where it fails.
Upstreams are real loopback servers (FaultyUpstream); time is a ManualClock.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
import structlog
from outbox_pg_server import PgServer, find_bindir
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import seawall
from seawall.outbox import Outbox, configure_sqlite
from seawall.testing import ManualClock
from seawall.testing._upstream import FaultyUpstream

BACKENDS = ["sqlite", "postgresql"]
#: Backoff without jitter: the timings are exact.
EXACT = seawall.Backoff(initial=1.0, maximum=900.0, multiplier=2.0, jitter=False)
T0 = 1_000_000.0


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The CLI configures structlog (it is the program there): undo it after each test."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's async layer is asyncio-only (test_outbox_trio checks the error under trio)."""
    return "asyncio"


def _require_postgres() -> str:
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (no initdb/pg_ctl); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session, on a free 127.0.0.1 port, fsync off."""
    server = PgServer.create(_require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest, pg_server: PgServer) -> str:
    """A database of this test module's own; its asyncpg URL."""
    name = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1]).lower()
    return pg_server.create_database(f"{name}_{uuid.uuid4().hex[:6]}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    return str(request.getfixturevalue("pg_database"))


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        configure_sqlite(engine)
    return engine


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream(_upstream_server: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """A healthy loopback HTTP server with no routes and an empty request log."""
    _upstream_server.reset()
    yield _upstream_server
    _upstream_server.reset()


def plain_policy(**parts: Any) -> seawall.Policy:
    """No retries inside a send and no breaker: each dispatch is one request."""
    parts.setdefault("retry", None)
    parts.setdefault("breaker", None)
    return seawall.Policy(**parts)


@pytest.fixture
def registry(upstream: FaultyUpstream, clock: ManualClock) -> seawall.Registry:
    registry = seawall.Registry(clock=clock)
    registry.add("payments", base_url=upstream.url, policy=plain_policy())
    registry.add("ledger", base_url=upstream.url + "/ledger", policy=plain_policy())
    return registry


@pytest.fixture
async def outbox(
    registry: seawall.Registry, engine: AsyncEngine, clock: ManualClock
) -> AsyncIterator[Outbox]:
    outbox = Outbox(registry, engine, table=f"outbox_{uuid.uuid4().hex[:10]}", clock=clock)
    outbox.route("payments", backoff=EXACT)
    outbox.route("ledger", backoff=EXACT)
    await outbox.create_schema()
    yield outbox
    await registry.aclose()


def session(engine: AsyncEngine) -> AsyncSession:
    return AsyncSession(engine, expire_on_commit=False)


async def rows(outbox: Outbox) -> list[dict[str, Any]]:
    """Every row of the outbox, by id."""
    async with outbox.engine.connect() as conn:
        found = await conn.execute(sa.select(outbox.table).order_by(outbox.table.c.id))
        return [dict(r) for r in found.mappings()]


async def row(outbox: Outbox, entry_id: int) -> dict[str, Any]:
    found = await outbox.get(entry_id)
    assert found is not None
    return found


async def enqueue(
    outbox: Outbox, dependency: str = "payments", path: str = "/v1/charges", **kw: Any
) -> Any:
    """Enqueue one call in a transaction of its own, committed."""
    kw.setdefault("json", {"amount": 100})
    async with session(outbox.engine) as s, s.begin():
        return await outbox.enqueue(s, dependency, "POST", path, **kw)


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 20.0) -> None:
    """Wait (polling, real time) until *check* holds; fail after *within* seconds.

    For tests where real processes or threads do the work: it asserts that
    something happens, not how fast (the timeout is a generous bound).
    """
    deadline = time.monotonic() + within
    for _ in range(1_000_000):
        found = check()
        if not isinstance(found, bool):
            found = await found
        if found:
            return
        if time.monotonic() > deadline:
            break
        await anyio.sleep(0.01)
    raise AssertionError(f"not true after {within} s: {check}")
