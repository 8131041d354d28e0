"""ResilienceMiddleware in plain Starlette and in FastAPI: deadlines, problems, shedding."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from integration_support import (
    Recorder,
    asgi_client,
    http_scope,
    run_lifespan,
    websocket_scope,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import seawall
import seawall.fastapi
from seawall.asgi import ResilienceMiddleware
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

Handler = Callable[[Request], Awaitable[Response]]

PROBLEM_KEYS = {"type", "title", "status", "detail", "dependency", "reason"}

#: Plain Starlette with Middleware(...), and FastAPI set up by install().
FRAMEWORKS = ["starlette", "fastapi"]
#: ...and FastAPI with the middleware only: no exception handlers, so the
#: middleware maps errors itself (used where errors are mapped).
ALL_FRAMEWORKS = [*FRAMEWORKS, "fastapi-middleware-only"]


def build_app(
    framework: str, registry: seawall.Registry, routes: dict[str, Handler], **options: Any
) -> Any:
    if framework == "starlette":
        return Starlette(
            routes=[Route(path, fn, methods=["GET", "POST"]) for path, fn in routes.items()],
            middleware=[Middleware(ResilienceMiddleware, registry=registry, **options)],
            lifespan=registry.lifespan,
        )
    if framework == "fastapi-middleware-only":
        app = FastAPI(lifespan=registry.lifespan)
        app.add_middleware(ResilienceMiddleware, registry=registry, **options)
    else:
        app = FastAPI()
        seawall.fastapi.install(app, registry, **options)
    for path, fn in routes.items():
        app.add_api_route(path, fn, methods=["GET", "POST"])
    return app


def assert_problem(response: httpx.Response, status: int, reason: str, dependency: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    assert body["reason"] == reason
    assert body["type"] == f"urn:seawall:problem:{reason}"
    assert body["dependency"] == dependency
    assert dependency in body["detail"]


def no_retry(**changes: Any) -> seawall.Policy:
    return seawall.Policy(retry=None, **changes)


def forward(registry: seawall.Registry, name: str, path: str, method: str = "GET") -> Handler:
    """A handler that calls *path* on dependency *name* and answers with its status."""

    async def handler(request: Request) -> Response:
        response = await registry.client(name).request(method, path)
        return PlainTextResponse(f"upstream {response.status_code}")

    return handler


async def remaining(request: Request) -> Response:
    return JSONResponse({"remaining": seawall.deadline_remaining()})


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=ALL_FRAMEWORKS)
def any_framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- deadlines -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_handler_sees_the_default_or_a_smaller_inbound_deadline(framework: str) -> None:
    registry = seawall.Registry()
    app = build_app(framework, registry, {"/r": remaining}, deadline=5.0)
    cases = {
        None: (4.5, 5.0),
        "0.5": (0.3, 0.5),
        "250ms": (0.1, 0.25),
        "2s": (1.8, 2.0),
        "100": (4.5, 5.0),  # larger than the default: the default wins
        "soon": (4.5, 5.0),  # unparsable: ignored
        "-1": (4.5, 5.0),
    }
    async with run_lifespan(app), asgi_client(app) as client:
        for header, (low, high) in cases.items():
            headers = {} if header is None else {"Request-Timeout": header}
            left = (await client.get("/r", headers=headers)).json()["remaining"]
            assert low < left <= high, (header, left)

    bare = build_app(framework, registry, {"/r": remaining}, deadline_header="X-Budget")
    async with run_lifespan(bare), asgi_client(bare) as client:
        assert (await client.get("/r")).json()["remaining"] is None
        assert (await client.get("/r", headers={"Request-Timeout": "2"})).json() == {
            "remaining": None
        }
        left = (await client.get("/r", headers={"X-Budget": "2"})).json()["remaining"]
        assert 1.8 < left <= 2.0


@pytest.mark.anyio
async def test_the_deadline_cuts_a_call_to_a_hanging_upstream(
    framework: str, upstream: FaultyUpstream
) -> None:
    upstream.route("/hang", Fault.hang())
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url)  # default policy: 10 s per attempt
    for options, headers in (
        ({"deadline": 0.15}, {}),
        ({"deadline": 30.0}, {"Request-Timeout": "0.15"}),
    ):
        app = build_app(
            framework, registry, {"/pay": forward(registry, "payments", "/hang")}, **options
        )
        async with run_lifespan(app), asgi_client(app) as client:
            started = time.monotonic()
            with anyio.fail_after(5):
                response = await client.get("/pay", headers=headers)
            elapsed = time.monotonic() - started
        assert_problem(response, 504, "deadline_exceeded", "payments")
        assert 0.12 <= elapsed < 1.5
    # GET is idempotent: a deadline-cut GET is not retried past the deadline.
    assert upstream.count("/hang") == 2


@pytest.mark.anyio
async def test_forward_deadline_sends_the_remaining_budget_upstream(
    framework: str, upstream: FaultyUpstream
) -> None:
    registry = seawall.Registry()
    registry.add("fwd", base_url=upstream.url, policy=seawall.Policy(forward_deadline=True))
    registry.add("quiet", base_url=upstream.url)
    routes = {
        "/fwd": forward(registry, "fwd", "/fwd"),
        "/quiet": forward(registry, "quiet", "/quiet"),
    }
    app = build_app(framework, registry, routes, deadline=5.0)
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/fwd", headers={"Request-Timeout": "2"})).status_code == 200
        assert (await client.get("/fwd")).status_code == 200
        assert (await client.get("/quiet", headers={"Request-Timeout": "2"})).status_code == 200
    inbound_2, default_5 = (
        float(r.header("request-timeout") or "nan") for r in upstream.requests("/fwd")
    )
    assert 1.5 < inbound_2 <= 2.0
    assert 4.5 < default_5 <= 5.0
    assert upstream.requests("/quiet")[0].header("request-timeout") is None

    custom = build_app(framework, registry, routes, deadline=5.0, deadline_header="X-Deadline")
    async with run_lifespan(custom), asgi_client(custom) as client:
        assert (await client.get("/fwd", headers={"X-Deadline": "1.5"})).status_code == 200
    last = upstream.requests("/fwd")[-1]
    assert last.header("request-timeout") is None
    assert 1.0 < float(last.header("x-deadline") or "nan") <= 1.5


# -- seawall errors become problems --------------------------------------------------


@pytest.mark.anyio
async def test_rejections_become_503_problems_with_retry_after(
    any_framework: str, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(500))
    registry = seawall.Registry(clock=clock)
    registry.add(
        "ledger",
        base_url=upstream.url,
        policy=no_retry(breaker=seawall.CircuitBreaker(minimum_calls=2, open_duration=12.5)),
    )
    registry.add(
        "quota",
        base_url=upstream.url,
        policy=no_retry(rate_limit=seawall.RateLimit(rate=1, per=60)),
    )
    routes = {
        "/ledger": forward(registry, "ledger", "/fail"),
        "/quota": forward(registry, "quota", "/ok"),
    }
    app = build_app(any_framework, registry, routes)
    async with run_lifespan(app), asgi_client(app) as client:
        for _ in range(2):
            assert (await client.get("/ledger")).text == "upstream 500"
        response = await client.get("/ledger")
        assert_problem(response, 503, "circuit_open", "ledger")
        assert response.headers["retry-after"] == "13"  # 12.5 s, rounded up
        assert upstream.count("/fail") == 2

        assert (await client.get("/quota")).text == "upstream 200"
        clock.advance(1.0)
        response = await client.get("/quota")
        assert_problem(response, 503, "rate_limited", "quota")
        assert response.headers["retry-after"] == "59"
        assert upstream.count("/ok") == 1


@pytest.mark.anyio
async def test_rate_limited_status_can_be_429(
    any_framework: str, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "quota",
        base_url=upstream.url,
        policy=no_retry(rate_limit=seawall.RateLimit(rate=1, per=30)),
    )
    app = build_app(
        any_framework,
        registry,
        {"/quota": forward(registry, "quota", "/ok")},
        rate_limited_status=429,
    )
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/quota")).status_code == 200
        response = await client.get("/quota")
    assert_problem(response, 429, "rate_limited", "quota")
    assert response.headers["retry-after"] == "30"


@pytest.mark.anyio
async def test_a_full_bulkhead_becomes_503(framework: str, upstream: FaultyUpstream) -> None:
    registry = seawall.Registry()
    registry.add(
        "db", base_url=upstream.url, policy=no_retry(bulkhead=seawall.Bulkhead(max_concurrent=1))
    )
    holding, release = anyio.Event(), anyio.Event()

    async def blocking_query() -> None:
        holding.set()
        await release.wait()

    async def hold(request: Request) -> Response:
        # A non-HTTP call under the same dependency takes the only slot.
        await registry.guard("db").call(blocking_query)
        return PlainTextResponse("held")

    app = build_app(framework, registry, {"/hold": hold, "/db": forward(registry, "db", "/x")})
    async with run_lifespan(app), asgi_client(app) as client:
        statuses: list[int] = []

        async def first() -> None:
            statuses.append((await client.get("/hold")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(2):
                await holding.wait()
            response = await client.get("/db")
            release.set()
        assert statuses == [200]
        assert (await client.get("/db")).status_code == 200
    assert_problem(response, 503, "bulkhead_full", "db")
    assert response.headers["retry-after"] == "1"
    assert upstream.count("/x") == 1


@pytest.mark.anyio
async def test_timeouts_become_504_and_unknown_outcomes_502(
    any_framework: str, upstream: FaultyUpstream
) -> None:
    upstream.route("/hang", Fault.hang())
    registry = seawall.Registry()
    registry.add(
        "attempt", base_url=upstream.url, policy=no_retry(timeouts=seawall.Timeouts(attempt=0.1))
    )
    registry.add(
        "read",
        base_url=upstream.url,
        policy=no_retry(timeouts=seawall.Timeouts(read=0.1, attempt=None)),
    )
    routes = {
        "/attempt": forward(registry, "attempt", "/hang"),
        "/read": forward(registry, "read", "/hang"),
        "/charge": forward(registry, "attempt", "/hang", method="POST"),
    }
    app = build_app(any_framework, registry, routes)
    async with run_lifespan(app), asgi_client(app) as client:
        with anyio.fail_after(5):
            attempt = await client.get("/attempt")
            read = await client.get("/read")
            charge = await client.post("/charge")
    assert_problem(attempt, 504, "timeout", "attempt")
    assert_problem(read, 504, "timeout", "read")
    assert_problem(charge, 502, "outcome_unknown", "attempt")
    assert "retry-after" not in attempt.headers


@pytest.mark.anyio
async def test_other_errors_pass_through_untouched(any_framework: str) -> None:
    registry = seawall.Registry()

    async def value_error(request: Request) -> Response:
        raise ValueError("boom")

    async def own_timeout(request: Request) -> Response:
        raise TimeoutError("not a seawall call")

    async def config_error(request: Request) -> Response:
        raise seawall.ConfigError(["x: bad, got 1"])

    routes = {"/value": value_error, "/timeout": own_timeout, "/config": config_error}
    app = build_app(any_framework, registry, routes)
    async with run_lifespan(app):
        async with asgi_client(app, raise_app_exceptions=False) as client:
            for path in routes:
                response = await client.get(path)
                assert response.status_code == 500, path
                assert response.headers["content-type"] != "application/problem+json"
        async with asgi_client(app) as client:
            # The very exception reaches the server, unwrapped.
            with pytest.raises(ValueError, match="boom"):
                await client.get("/value")
            with pytest.raises(TimeoutError, match="not a seawall call"):
                await client.get("/timeout")


@pytest.mark.anyio
async def test_problem_bodies_carry_no_internal_detail(
    any_framework: str, upstream: FaultyUpstream
) -> None:
    upstream.route("/hang", Fault.hang())
    secret_url = upstream.url.replace("http://", "http://svc:s3cret@")
    registry = seawall.Registry()
    registry.add("pg", endpoints=[secret_url], policy=no_retry())
    registry.add(
        "payments",
        base_url=secret_url,
        headers={"Authorization": "Bearer tok-123"},
        policy=no_retry(timeouts=seawall.Timeouts(attempt=0.1)),
    )
    registry.breakers("pg")[secret_url].force_open()
    routes = {
        "/pg": forward(registry, "pg", secret_url + "/q"),
        "/charge": forward(registry, "payments", "/hang", method="POST"),
    }
    app = build_app(any_framework, registry, routes)
    async with run_lifespan(app), asgi_client(app) as client:
        rejected = await client.get("/pg")
        unknown = await client.post("/charge")
    assert_problem(rejected, 503, "circuit_open", "pg")
    assert_problem(unknown, 502, "outcome_unknown", "payments")
    for response in (rejected, unknown):
        text = response.text
        for leak in ("s3cret", "svc:", "tok-123", "Bearer", "127.0.0.1", "Traceback", "/hang"):
            assert leak not in text, (leak, text)
        assert all("s3cret" not in v and "tok-123" not in v for v in response.headers.values())


@pytest.mark.anyio
async def test_an_error_after_the_response_started_is_re_raised_not_answered(
    any_framework: str,
) -> None:
    registry = seawall.Registry()

    async def stream(request: Request) -> Response:
        async def body() -> Any:
            yield b"first"
            raise seawall.CircuitOpenError("open", dependency="payments", retry_after=3.0)

        return StreamingResponse(body(), media_type="text/plain")

    app = build_app(any_framework, registry, {"/stream": stream})
    recorder = Recorder([{"type": "http.request", "body": b"", "more_body": False}])
    with anyio.fail_after(2), pytest.raises(Exception) as excinfo:  # noqa: PT011
        await app(http_scope("/stream"), recorder.receive, recorder.send)
    chain = [excinfo.value, excinfo.value.__cause__, excinfo.value.__context__]
    assert any(isinstance(e, seawall.CircuitOpenError) for e in chain), chain
    starts = recorder.of_type("http.response.start")
    assert len(starts) == 1
    assert starts[0]["status"] == 200
    bodies = [m["body"] for m in recorder.of_type("http.response.body")]
    assert bodies[0] == b"first"
    assert not any(b"problem" in b for b in bodies)


# -- load shedding -------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_over_the_limit_are_shed_without_running_the_handler(
    framework: str,
) -> None:
    registry = seawall.Registry()
    entered: list[str] = []
    all_in, release = anyio.Event(), anyio.Event()

    async def hold(request: Request) -> Response:
        entered.append(request.query_params["n"])
        if len(entered) == 2:
            all_in.set()
        await release.wait()
        return PlainTextResponse("done")

    app = build_app(framework, registry, {"/hold": hold}, max_concurrent_requests=2)
    statuses: dict[str, int] = {}
    async with run_lifespan(app), asgi_client(app) as client:

        async def fetch(n: str) -> None:
            statuses[n] = (await client.get("/hold", params={"n": n})).status_code

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, "1")
            tg.start_soon(fetch, "2")
            with anyio.fail_after(2):
                await all_in.wait()
            with anyio.fail_after(0.5):  # at once: the shed request waits for nothing
                shed = await client.get("/hold", params={"n": "3"})
            assert entered == ["1", "2"] or entered == ["2", "1"]
            release.set()
        assert statuses == {"1": 200, "2": 200}
        # Slots are given back: the next request runs.
        assert (await client.get("/hold", params={"n": "4"})).status_code == 200
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.headers["content-type"] == "application/problem+json"
    assert shed.json()["reason"] == "overloaded"
    assert sorted(entered) == ["1", "2", "4"]


# -- pass-through: streaming and websockets -------------------------------------------


@pytest.mark.anyio
async def test_streaming_responses_pass_through_unbuffered(framework: str) -> None:
    registry = seawall.Registry()
    recorder = Recorder([{"type": "http.request", "body": b"", "more_body": False}])
    seen_by_server: list[list[bytes]] = []

    async def stream(request: Request) -> Response:
        async def body() -> Any:
            yield b"one"
            # The first chunk already reached the server: nothing buffers it.
            seen_by_server.append([m["body"] for m in recorder.of_type("http.response.body")])
            yield b"two"

        return StreamingResponse(body(), media_type="text/plain", headers={"X-Stream": "yes"})

    app = build_app(framework, registry, {"/stream": stream}, deadline=5.0)
    with anyio.fail_after(2):
        await app(http_scope("/stream"), recorder.receive, recorder.send)
    (start,) = recorder.of_type("http.response.start")
    assert start["status"] == 200
    assert (b"x-stream", b"yes") in start["headers"]
    chunks = [
        (m["body"], m.get("more_body", False)) for m in recorder.of_type("http.response.body")
    ]
    assert chunks == [(b"one", True), (b"two", True), (b"", False)]
    assert seen_by_server == [[b"one"]]

    async with asgi_client(app) as client:
        async with client.stream("GET", "/stream") as response:
            assert [c async for c in response.aiter_bytes()] != []
        assert response.status_code == 200


@pytest.mark.anyio
async def test_websockets_pass_through_untouched() -> None:
    registry = seawall.Registry()
    holding, release = anyio.Event(), anyio.Event()

    async def hold(request: Request) -> Response:
        holding.set()
        await release.wait()
        return PlainTextResponse("held")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_json({"echo": text, "deadline": seawall.deadline_remaining()})
        await websocket.close()

    app = Starlette(
        routes=[Route("/hold", hold), WebSocketRoute("/ws", echo)],
        middleware=[
            Middleware(
                ResilienceMiddleware, registry=registry, deadline=5.0, max_concurrent_requests=1
            )
        ],
    )
    recorder = Recorder(
        [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hi"},
            {"type": "websocket.disconnect", "code": 1000},
        ]
    )
    async with asgi_client(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/hold")
        with anyio.fail_after(2):
            await holding.wait()
            # The one HTTP slot is taken; a websocket is neither shed nor given a deadline.
            await app(websocket_scope("/ws"), recorder.receive, recorder.send)
        release.set()
    kinds = [m["type"] for m in recorder.sent]
    assert kinds == ["websocket.accept", "websocket.send", "websocket.close"]
    assert recorder.sent[1]["text"] == '{"echo":"hi","deadline":null}'


def test_middleware_options_are_validated() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    for bad in ({"deadline": 0}, {"deadline": True}, {"deadline": -1.0}):
        with pytest.raises(ValueError, match="deadline"):
            ResilienceMiddleware(app, **bad)
    for bad in ({"max_concurrent_requests": 0}, {"max_concurrent_requests": 1.5}):
        with pytest.raises(ValueError, match="max_concurrent_requests"):
            ResilienceMiddleware(app, **bad)
    with pytest.raises(ValueError, match="rate_limited_status"):
        ResilienceMiddleware(app, rate_limited_status=500)
    ResilienceMiddleware(app, deadline=0.5, max_concurrent_requests=1, rate_limited_status=429)
