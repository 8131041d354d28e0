"""Items 9 and 10: every documented form maps seawall's errors, and never hides a bug.

The forms: ``ResilienceMiddleware`` wrapped around a whole Starlette or
FastAPI app (docs/http-errors.md), ``Middleware(ResilienceMiddleware)`` in
Starlette, ``seawall.fastapi.install`` and ``seawall.litestar.ResiliencePlugin``.
Each request makes real calls to a loopback upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hardening_mw_support import asgi_client, serve
from litestar import Litestar, get
from litestar import Response as LitestarResponse
from litestar.params import FromPath
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import seawall
import seawall.fastapi
import seawall.litestar
from seawall.asgi import ResilienceMiddleware, problem_for
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

Behaviour = Callable[[seawall.Registry], Awaitable[tuple[int, bytes]]]


async def _refused(registry: seawall.Registry) -> seawall.CircuitOpenError:
    try:
        await registry.client("payments").get("/charge")
    except seawall.CircuitOpenError as exc:
        return exc
    raise AssertionError("the breaker is forced open")  # pragma: no cover


async def circuit_open(registry: seawall.Registry) -> tuple[int, bytes]:
    raise await _refused(registry)


async def timed_out(registry: seawall.Registry) -> tuple[int, bytes]:
    await registry.client("slow").get("/hang")
    raise AssertionError("the upstream hangs")  # pragma: no cover


async def bug(registry: seawall.Registry) -> tuple[int, bytes]:
    raise KeyError("missing")


async def seawall_group(registry: seawall.Registry) -> tuple[int, bytes]:
    # A fan-out whose every branch was refused (one in a nested group).
    first, second = await _refused(registry), await _refused(registry)
    raise ExceptionGroup("fan-out", [first, ExceptionGroup("inner", [second])])


async def mixed_group(registry: seawall.Registry) -> tuple[int, bytes]:
    # A fan-out where one branch was refused and another hit a bug.
    raise ExceptionGroup("fan-out", [await _refused(registry), KeyError("missing")])


async def own_500(registry: seawall.Registry) -> tuple[int, bytes]:
    return 500, b"the app's own 500"


BEHAVIOURS: dict[str, Behaviour] = {
    "circuit_open": circuit_open,
    "timed_out": timed_out,
    "bug": bug,
    "seawall_group": seawall_group,
    "mixed_group": mixed_group,
    "own_500": own_500,
}


def starlette_routes(registry: seawall.Registry) -> list[Route]:
    def route(path: str, behaviour: Behaviour) -> Route:
        async def handler(request: Request) -> Response:
            status, body = await behaviour(registry)
            return Response(body, status)

        return Route(path, handler)

    async def streamed_500(request: Request) -> Response:
        async def chunks() -> Any:
            yield b"half"
            yield b" and half"

        return StreamingResponse(chunks(), status_code=500)

    return [
        *(route(f"/{name}", fn) for name, fn in BEHAVIOURS.items()),
        Route("/streamed_500", streamed_500),
    ]


def litestar_app(registry: seawall.Registry, *, plugin: bool) -> Litestar:
    @get("/{name:str}")
    async def handler(name: FromPath[str]) -> LitestarResponse[bytes]:
        status, body = await BEHAVIOURS[name](registry)
        return LitestarResponse(body, status_code=status)

    plugins = [seawall.litestar.ResiliencePlugin(registry)] if plugin else []
    return Litestar(route_handlers=[handler], plugins=plugins)


def build(form: str, registry: seawall.Registry) -> Any:
    if form == "starlette-outer":
        return ResilienceMiddleware(Starlette(routes=starlette_routes(registry)), registry=registry)
    if form == "starlette-outer-debug":
        inner = Starlette(debug=True, routes=starlette_routes(registry))
        return ResilienceMiddleware(inner, registry=registry)
    if form == "starlette-middleware":
        return Starlette(
            routes=starlette_routes(registry),
            middleware=[Middleware(ResilienceMiddleware, registry=registry)],
        )
    if form in ("fastapi-outer", "fastapi-install"):
        app = FastAPI()
        app.router.routes.extend(starlette_routes(registry))
        if form == "fastapi-install":
            seawall.fastapi.install(app, registry)
            return app
        return ResilienceMiddleware(app, registry=registry)
    if form == "litestar-plugin":
        return litestar_app(registry, plugin=True)
    if form == "litestar-outer":
        whole = litestar_app(registry, plugin=False)
        return ResilienceMiddleware(whole, registry=registry)  # type: ignore[arg-type]
    raise AssertionError(form)  # pragma: no cover


#: The forms the docs show, each of which maps seawall's errors.
MAPPING_FORMS = [
    "starlette-outer",
    "starlette-outer-debug",
    "starlette-middleware",
    "fastapi-outer",
    "fastapi-install",
    "litestar-plugin",
]


@dataclass
class Deps:
    registry: seawall.Registry
    upstream: FaultyUpstream


@pytest.fixture
def deps(upstream: FaultyUpstream) -> Deps:
    upstream.route("/hang", Fault.hang())
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=seawall.Policy(retry=None))
    registry.add(
        "slow",
        base_url=upstream.url,
        policy=seawall.Policy(retry=None, timeouts=seawall.Timeouts(attempt=0.05, total=1.0)),
    )
    registry.breaker("payments").force_open()
    return Deps(registry, upstream)


async def get_from(form: str, deps: Deps, path: str) -> httpx.Response:
    app = build(form, deps.registry)
    async with deps.registry, asgi_client(app, raise_app_exceptions=False) as client:
        return await client.get(path)


def assert_problem(response: httpx.Response, status: int, reason: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if reason is not None:
        assert response.json()["reason"] == reason


@pytest.mark.parametrize("form", MAPPING_FORMS)
async def test_a_refused_call_is_a_503_problem_in_every_documented_form(
    form: str, deps: Deps
) -> None:
    response = await get_from(form, deps, "/circuit_open")
    assert_problem(response, 503, "circuit_open")
    assert int(response.headers["retry-after"]) >= 1
    assert deps.upstream.count("/charge") == 0


@pytest.mark.parametrize("form", MAPPING_FORMS)
async def test_a_timed_out_call_is_a_504_problem_in_every_documented_form(
    form: str, deps: Deps
) -> None:
    assert_problem(await get_from(form, deps, "/timed_out"), 504)


@pytest.mark.parametrize("form", MAPPING_FORMS)
async def test_a_group_of_seawall_errors_alone_is_mapped(form: str, deps: Deps) -> None:
    assert_problem(await get_from(form, deps, "/seawall_group"), 503, "circuit_open")


@pytest.mark.parametrize("form", [*MAPPING_FORMS, "litestar-outer"])
@pytest.mark.parametrize("path", ["/mixed_group", "/bug"])
async def test_a_bug_is_a_500_even_beside_a_seawall_error(form: str, path: str, deps: Deps) -> None:
    response = await get_from(form, deps, path)
    assert response.status_code == 500
    assert response.headers.get("content-type") != "application/problem+json"


@pytest.mark.parametrize("form", [f for f in MAPPING_FORMS if "litestar" not in f])
async def test_a_bug_beside_a_seawall_error_propagates_to_the_server(form: str, deps: Deps) -> None:
    app = build(form, deps.registry)
    async with deps.registry, asgi_client(app) as client:
        with pytest.raises(ExceptionGroup) as info:
            await client.get("/mixed_group")
    kinds = {type(e) for e in info.value.exceptions}
    assert kinds == {seawall.CircuitOpenError, KeyError}


@pytest.mark.parametrize("form", ["starlette-outer", "starlette-middleware", "fastapi-install"])
def test_a_bug_beside_a_seawall_error_is_logged_by_uvicorn(
    form: str, deps: Deps, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(build(form, deps.registry)) as url:
        response = httpx.get(f"{url}/mixed_group", timeout=5.0)
    assert response.status_code == 500
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(logged) == 1, caplog.text
    assert logged[0].exc_info is not None
    group = logged[0].exc_info[1]
    assert isinstance(group, ExceptionGroup)
    assert any(isinstance(e, KeyError) for e in group.exceptions)


def test_a_refused_call_is_a_503_problem_under_uvicorn_around_a_whole_app(
    deps: Deps, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(build("starlette-outer", deps.registry)) as url:
        response = httpx.get(f"{url}/circuit_open", timeout=5.0)
    assert_problem(response, 503, "circuit_open")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("form", ["starlette-outer", "fastapi-outer", "litestar-plugin"])
async def test_an_apps_own_500_goes_out_unchanged(form: str, deps: Deps) -> None:
    response = await get_from(form, deps, "/own_500")
    assert (response.status_code, response.content) == (500, b"the app's own 500")


@pytest.mark.parametrize("form", ["starlette-outer", "fastapi-outer"])
async def test_a_streamed_500_is_not_held(form: str, deps: Deps) -> None:
    response = await get_from(form, deps, "/streamed_500")
    assert (response.status_code, response.content) == (500, b"half and half")


async def test_around_a_whole_litestar_app_errors_are_litestars(deps: Deps) -> None:
    """Documented: Litestar answers every error itself; use the plugin to map them."""
    response = await get_from("litestar-outer", deps, "/circuit_open")
    assert response.status_code == 500


def test_problem_for_answers_a_group_only_if_every_error_in_it_is_seawalls() -> None:
    refused = seawall.CircuitOpenError("open", dependency="payments", retry_after=2.0)
    limited = seawall.RateLimitedError("limited", dependency="search", retry_after=1.0)
    answer = problem_for(ExceptionGroup("g", [refused, ExceptionGroup("h", [limited])]))
    assert answer is not None
    assert answer[0] == 503
    assert b'"circuit_open"' in answer[2]
    assert problem_for(ExceptionGroup("g", [refused, KeyError("k")])) is None
    assert problem_for(ExceptionGroup("g", [refused, ExceptionGroup("h", [ValueError()])])) is None
    config = seawall.ConfigError(["x: bad"])
    assert problem_for(ExceptionGroup("g", [refused, config])) is None
    assert problem_for(BaseExceptionGroup("g", [refused, KeyboardInterrupt()])) is None
