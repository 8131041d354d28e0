"""Fixtures for the example apps' tests.

The payments provider is a real loopback ``PaymentProvider`` with a ledger
(a fresh one each test); the catalog and notifications are real loopback
servers (``FaultyUpstream``), shared by the whole session and reset around
every test. The shop runs with its own ``resilience.toml``, base URLs
pointed at those servers and timeouts shortened so that a hung upstream
costs a fraction of a second; its orders and outbox live in a SQLite file
of the test's own, on a ManualClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from example_shop_harness import TEST_OVERRIDES, OpenShop, Shop, Upstreams, merge, wall_clock

import seawall
from seawall.testing import FaultyUpstream, PaymentProvider


@pytest.fixture
def anyio_backend() -> str:
    """The shop's orders and outbox go through SQLAlchemy's async layer: asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session")
def _servers() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream() as c, FaultyUpstream() as n:
        yield c, n


@pytest.fixture
def upstreams(_servers: tuple[FaultyUpstream, FaultyUpstream]) -> Iterator[Upstreams]:
    """A fresh payment provider; the catalog and notifications healthy, with no
    routes and empty request logs."""
    catalog, notifications = _servers
    for server in _servers:
        server.reset()
    with PaymentProvider() as payments:
        yield Upstreams(payments, catalog, notifications)
    for server in _servers:
        server.reset()


@pytest.fixture
def settings(upstreams: Upstreams) -> dict[str, Any]:
    """The shop's configuration as the tests run it (a fresh dict each test)."""
    from examples.fastapi_app.resilience import load_settings

    shipped = load_settings(environ=upstreams.environ())
    return merge(shipped, {"dependencies": TEST_OVERRIDES})


@pytest.fixture(params=["fastapi", "litestar"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"


@pytest.fixture
def open_shop(framework: str, upstreams: Upstreams, database_url: str) -> OpenShop:
    """``async with open_shop(settings) as shop``: the example app of *framework*, running.

    ``dispatch=True`` runs the app's own dispatcher in the background (the
    app's lifespan); by default the test drives ``shop.dispatcher`` by hand.
    """

    @asynccontextmanager
    async def open_(config: Mapping[str, Any], *, dispatch: bool = False) -> AsyncIterator[Shop]:
        registry = seawall.Registry.from_config(config)
        clock = wall_clock()
        options: dict[str, Any] = {
            "registry": registry,
            "database_url": database_url,
            "clock": clock,
            "dispatch": dispatch,
        }
        if framework == "fastapi":
            from examples.fastapi_app.app import create_app

            app = create_app(**options)
            # Not FastAPI's TestClient (it warns): httpx straight onto the ASGI
            # app, with the lifespan run by hand so the registry opens and closes.
            transport = httpx.ASGITransport(app=app)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client,
            ):
                yield Shop(
                    framework, client, registry, upstreams, app.state.outbox, clock, database_url
                )
        else:
            from examples.litestar_app.app import create_app as create_litestar_app
            from litestar.testing import AsyncTestClient

            app = create_litestar_app(**options)
            async with AsyncTestClient(app) as client:
                yield Shop(
                    framework, client, registry, upstreams, app.state.outbox, clock, database_url
                )

    return open_


@pytest.fixture
async def shop(open_shop: OpenShop, settings: dict[str, Any]) -> AsyncIterator[Shop]:
    async with open_shop(settings) as running:
        yield running
