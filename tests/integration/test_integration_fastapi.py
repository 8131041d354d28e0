"""seawall.fastapi: clients by Depends, install() with middleware, lifespan and handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
import httpx
import pytest
from fastapi import Depends, FastAPI
from integration_support import asgi_client, run_lifespan

import seawall
import seawall.fastapi
from seawall.asgi import ResilienceMiddleware
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

Payments = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("payments"))]


def make_registry(upstream: FaultyUpstream) -> seawall.Registry:
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=seawall.Policy(retry=None))
    registry.add("search", base_url=upstream.url, policy=seawall.Policy(retry=None))
    return registry


async def test_depends_hands_the_registry_client_to_the_handler(
    upstream: FaultyUpstream,
) -> None:
    registry = make_registry(upstream)
    app = FastAPI()
    seawall.fastapi.install(app, registry)
    seen: list[seawall.ResilientClient] = []

    @app.get("/explicit")
    async def explicit(
        payments: seawall.ResilientClient = Depends(seawall.fastapi.client("payments")),  # noqa: B008
    ) -> Any:
        seen.append(payments)
        return (await payments.get("/charge")).json()

    @app.get("/annotated")
    async def annotated(payments: Payments) -> Any:
        seen.append(payments)
        return (await payments.get("/charge")).json()

    @app.get("/search")
    async def search(
        client: Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("search"))],
    ) -> Any:
        seen.append(client)
        return {"dependency": client.dependency}

    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/explicit")).json() == {"path": "/charge", "n": 1}
        assert (await client.get("/annotated")).json() == {"path": "/charge", "n": 2}
        assert (await client.get("/search")).json() == {"dependency": "search"}
    assert seen[0] is seen[1] is registry.client("payments")
    assert seen[2] is registry.client("search")
    assert seawall.fastapi.client("payments") is seawall.fastapi.client("payments")
    assert seawall.fastapi.registry_of(app) is registry


async def test_dependency_overrides_replace_the_client(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)
    app = FastAPI()
    seawall.fastapi.install(app, registry)

    @app.get("/pay")
    async def pay(payments: Payments) -> Any:
        return (await payments.get("/charge")).json()

    fake = seawall.ResilientClient(
        "payments",
        base_url="http://fake.example",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"fake": True})),
    )
    app.dependency_overrides[seawall.fastapi.client("payments")] = lambda: fake
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/pay")).json() == {"fake": True}
        app.dependency_overrides.clear()
        assert (await client.get("/pay")).json() == {"path": "/charge", "n": 1}
    await fake.aclose()
    assert upstream.count("/charge") == 1


async def test_install_runs_the_apps_own_lifespan_inside_the_registrys(
    upstream: FaultyUpstream,
) -> None:
    registry = make_registry(upstream)
    events: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        # The clients are open for the app's own startup and shutdown work.
        response = await registry.client("payments").get("/warmup")
        events.append(f"startup {response.status_code}")
        yield
        response = await registry.client("payments").get("/goodbye")
        events.append(f"shutdown {response.status_code}")

    app = FastAPI(lifespan=own)
    seawall.fastapi.install(app, registry)

    @app.get("/pay")
    async def pay(payments: Payments) -> Any:
        events.append("request")
        return (await payments.get("/charge")).json()

    async with run_lifespan(app):
        assert events == ["startup 200"]
        async with asgi_client(app) as client:
            assert (await client.get("/pay")).status_code == 200
        assert upstream.open_connections == 1
    assert events == ["startup 200", "request", "shutdown 200"]
    assert [r.path for r in upstream.requests()] == ["/warmup", "/charge", "/goodbye"]
    # The registry's lifespan ended last: every pool is closed.
    assert await anyio.to_thread.run_sync(lambda: upstream.wait_for_open_connections(0))


async def test_install_adds_the_middleware_with_its_options(upstream: FaultyUpstream) -> None:
    upstream.route("/hang", Fault.hang())
    registry = make_registry(upstream)
    app = FastAPI()
    seawall.fastapi.install(app, registry, deadline=0.15, rate_limited_status=429)
    assert [m.cls for m in app.user_middleware] == [ResilienceMiddleware]
    assert app.user_middleware[0].kwargs == {
        "registry": registry,
        "deadline": 0.15,
        "rate_limited_status": 429,
    }

    @app.get("/left")
    async def left() -> Any:
        return {"left": seawall.deadline_remaining()}

    @app.get("/hang")
    async def hang(payments: Payments) -> Any:
        return (await payments.get("/hang")).json()

    async with run_lifespan(app), asgi_client(app) as client:
        assert 0.0 < (await client.get("/left")).json()["left"] <= 0.15
        response = await client.get("/hang")
    assert response.status_code == 504
    assert response.json()["reason"] == "deadline_exceeded"
    assert response.json()["dependency"] == "payments"


class StatusSpy:
    """A user middleware recording the status its inner app answered, or the error."""

    def __init__(self, app: Any, seen: list[object]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.seen.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, spy)
        except Exception as exc:
            self.seen.append(type(exc))
            raise


async def test_install_handles_seawall_errors_inside_the_app(upstream: FaultyUpstream) -> None:
    """User middleware inside seawall's sees a problem response, not an exception."""
    registry = make_registry(upstream)
    app = FastAPI()
    seen: list[object] = []
    app.add_middleware(StatusSpy, seen=seen)  # added first: it sits inside ResilienceMiddleware
    seawall.fastapi.install(app, registry, rate_limited_status=429)

    @app.get("/pay")
    async def pay(payments: Payments) -> Any:
        return (await payments.get("/charge")).json()

    @app.get("/limited")
    async def limited() -> Any:
        raise seawall.RateLimitedError("slow down", dependency="search", retry_after=2.5)

    @app.get("/config")
    async def config() -> Any:
        raise seawall.ConfigError(["x: bad, got 1"])

    registry.breaker("payments").force_open()
    async with run_lifespan(app), asgi_client(app, raise_app_exceptions=False) as client:
        opened = await client.get("/pay")
        limited_response = await client.get("/limited")
        config_response = await client.get("/config")
    assert opened.status_code == 503
    assert opened.headers["content-type"] == "application/problem+json"
    assert opened.headers["retry-after"] == "1"
    assert opened.json()["reason"] == "circuit_open"
    assert limited_response.status_code == 429
    assert limited_response.headers["retry-after"] == "3"
    assert limited_response.json()["dependency"] == "search"
    # A seawall error that is no answer for a client stays a server error.
    assert config_response.status_code == 500
    assert seen == [503, 429, seawall.ConfigError]
    assert upstream.count() == 0


async def test_a_client_without_install_is_a_clear_error() -> None:
    app = FastAPI()

    @app.get("/pay")
    async def pay(payments: Payments) -> Any:  # pragma: no cover - never reached
        return {}

    async with asgi_client(app) as client:
        with pytest.raises(LookupError, match="install"):
            await client.get("/pay")
