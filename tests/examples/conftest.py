"""Fixtures for the example apps' tests.

Each of the shop's dependencies is a real loopback server (``FaultyUpstream``),
shared by the whole session and reset around every test. The shop runs with
its own ``resilience.toml``, base URLs pointed at those servers and timeouts
shortened so that a hung upstream costs a fraction of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from example_shop_harness import TEST_OVERRIDES, OpenShop, Shop, Upstreams, merge

import seawall
from seawall.testing import FaultyUpstream


@pytest.fixture(scope="session")
def _servers() -> Iterator[Upstreams]:
    with FaultyUpstream() as p, FaultyUpstream() as c, FaultyUpstream() as n:
        yield Upstreams(p, c, n)


@pytest.fixture
def upstreams(_servers: Upstreams) -> Iterator[Upstreams]:
    """The three upstreams, healthy, with no routes and empty request logs."""
    for server in _servers.all():
        server.reset()
    yield _servers
    for server in _servers.all():
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
def open_shop(framework: str, upstreams: Upstreams) -> OpenShop:
    """``async with open_shop(settings) as shop``: the example app of *framework*, running."""

    @asynccontextmanager
    async def open_(config: Mapping[str, Any]) -> AsyncIterator[Shop]:
        registry = seawall.Registry.from_config(config)
        if framework == "fastapi":
            from examples.fastapi_app.app import create_app

            app = create_app(registry=registry)
            # Not FastAPI's TestClient (it warns): httpx straight onto the ASGI
            # app, with the lifespan run by hand so the registry opens and closes.
            transport = httpx.ASGITransport(app=app)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client,
            ):
                yield Shop(framework, client, registry, upstreams)
        else:
            from examples.litestar_app.app import create_app as create_litestar_app
            from litestar.testing import AsyncTestClient

            async with AsyncTestClient(create_litestar_app(registry=registry)) as client:
                yield Shop(framework, client, registry, upstreams)

    return open_


@pytest.fixture
async def shop(open_shop: OpenShop, settings: dict[str, Any]) -> AsyncIterator[Shop]:
    async with open_shop(settings) as running:
        yield running
