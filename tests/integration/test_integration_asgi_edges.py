"""Edge cases of the middleware and the status app."""

from __future__ import annotations

import anyio
import pytest
from integration_support import asgi_client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import seawall
from seawall.asgi import ResilienceMiddleware, status_app

pytestmark = pytest.mark.anyio


async def test_a_seawall_error_inside_an_exception_group_is_answered() -> None:
    async def fan_out(request: Request) -> JSONResponse:
        async def refused() -> None:
            raise seawall.CircuitOpenError("open", dependency="payments", retry_after=3.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(refused)
        return JSONResponse({})  # pragma: no cover - the group raises

    app = Starlette(routes=[Route("/", fan_out)], middleware=[Middleware(ResilienceMiddleware)])
    async with asgi_client(app) as client:
        response = await client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "4"
    assert response.json()["reason"] == "circuit_open"
    assert response.json()["dependency"] == "payments"


async def test_an_exception_group_of_foreign_errors_passes_through() -> None:
    async def fan_out(request: Request) -> JSONResponse:
        async def broken() -> None:
            raise ValueError("ours to see")

        async with anyio.create_task_group() as tg:
            tg.start_soon(broken)
        return JSONResponse({})  # pragma: no cover

    app = Starlette(routes=[Route("/", fan_out)], middleware=[Middleware(ResilienceMiddleware)])
    async with asgi_client(app) as client:
        with pytest.raises(BaseExceptionGroup) as info:
            await client.get("/")
    assert isinstance(info.value.exceptions[0], ValueError)


@pytest.mark.parametrize("token", ["", "   "])
def test_status_app_refuses_an_empty_admin_token(token: str) -> None:
    with pytest.raises(ValueError, match="admin_token"):
        status_app(seawall.Registry(), admin_token=token)


async def test_status_app_head_has_no_body_and_unknown_paths_are_404() -> None:
    registry = seawall.Registry()
    registry.add("db", policy=seawall.Policy())
    app = Starlette(routes=[Mount("/_resilience", status_app(registry))])
    async with asgi_client(app) as client:
        head = await client.head("/_resilience/")
        missing = await client.get("/_resilience/nothing/here")
        wrong = await client.put("/_resilience/")
    assert head.status_code == 200
    assert head.content == b""
    assert missing.status_code == 404
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["allow"]
