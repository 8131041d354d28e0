"""seawall.litestar: the plugin (middleware, lifespan, exception handlers) and provide_client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from integration_support import asgi_client, run_lifespan
from litestar import Litestar, Response, get, post
from litestar.di import NamedDependency

import seawall
import seawall.litestar
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

Client = NamedDependency[seawall.ResilientClient]
PROBLEM_KEYS = {"type", "title", "status", "detail", "dependency", "reason"}


def make_registry(upstream: FaultyUpstream, clock: ManualClock | None = None) -> seawall.Registry:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=seawall.Policy(retry=None, timeouts=seawall.Timeouts(attempt=0.1)),
    )
    registry.add(
        "quota",
        base_url=upstream.url,
        policy=seawall.Policy(retry=None, rate_limit=seawall.RateLimit(rate=1, per=20)),
    )
    registry.add(
        "fwd", base_url=upstream.url, policy=seawall.Policy(retry=None, forward_deadline=True)
    )
    return registry


def make_app(registry: seawall.Registry, handlers: list[Any], **options: Any) -> Litestar:
    return Litestar(
        route_handlers=handlers,
        plugins=[seawall.litestar.ResiliencePlugin(registry, **options)],
        dependencies={
            "payments": seawall.litestar.provide_client("payments"),
            "quota": seawall.litestar.provide_client("quota"),
            "fwd": seawall.litestar.provide_client("fwd"),
        },
        logging_config=None,
    )


def assert_problem(response: httpx.Response, status: int, reason: str, dependency: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == PROBLEM_KEYS
    assert (body["status"], body["reason"], body["dependency"]) == (status, reason, dependency)


async def wait_for_connections(upstream: FaultyUpstream, expected: int) -> bool:
    return await anyio.to_thread.run_sync(
        lambda: upstream.wait_for_open_connections(expected, timeout=2.0)
    )


async def test_provide_client_hands_the_registry_client(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)
    seen: list[seawall.ResilientClient] = []

    @get("/pay")
    async def pay(payments: Client) -> Any:
        seen.append(payments)
        return (await payments.get("/charge")).json()

    @get("/quota")
    async def quota(quota: Client) -> Any:
        seen.append(quota)
        return {"dependency": quota.dependency}

    app = make_app(registry, [pay, quota])
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/pay")).json() == {"path": "/charge", "n": 1}
        assert (await client.get("/pay")).json() == {"path": "/charge", "n": 2}
        assert (await client.get("/quota")).json() == {"dependency": "quota"}
        assert upstream.open_connections == 1
    assert seen[0] is seen[1] is registry.client("payments")
    assert seen[2] is registry.client("quota")
    # The plugin's lifespan closed the pools when the app shut down.
    assert await wait_for_connections(upstream, 0)


async def test_the_apps_own_lifespan_can_use_the_clients(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)
    events: list[str] = []

    @asynccontextmanager
    async def own(app: Litestar) -> AsyncIterator[None]:
        events.append(f"startup {(await registry.client('payments').get('/warmup')).status_code}")
        yield
        events.append(f"shutdown {(await registry.client('payments').get('/bye')).status_code}")

    app = Litestar(
        route_handlers=[],
        plugins=[seawall.litestar.ResiliencePlugin(registry)],
        lifespan=[own],
        logging_config=None,
    )
    async with run_lifespan(app):
        assert events == ["startup 200"]
    assert events == ["startup 200", "shutdown 200"]
    assert [r.path for r in upstream.requests()] == ["/warmup", "/bye"]
    # The registry closed last, after the app's own shutdown work.
    assert await wait_for_connections(upstream, 0)


async def test_the_middleware_sets_and_forwards_the_deadline(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)

    @get("/left")
    async def left() -> Any:
        return {"left": seawall.deadline_remaining()}

    @get("/fwd")
    async def forward(fwd: Client) -> Any:
        return (await fwd.get("/fwd")).json()

    app = make_app(registry, [left, forward], deadline=5.0)
    async with run_lifespan(app), asgi_client(app) as client:
        assert 4.5 < (await client.get("/left")).json()["left"] <= 5.0
        smaller = (await client.get("/left", headers={"Request-Timeout": "0.5"})).json()["left"]
        assert 0.3 < smaller <= 0.5
        assert (await client.get("/fwd", headers={"Request-Timeout": "2"})).status_code == 200
    forwarded = upstream.requests("/fwd")[0].header("request-timeout")
    assert forwarded is not None
    assert 1.5 < float(forwarded) <= 2.0


async def test_seawall_errors_become_problems(upstream: FaultyUpstream, clock: ManualClock) -> None:
    upstream.route("/hang", Fault.hang())
    registry = make_registry(upstream, clock)

    @get("/open")
    async def opened(payments: Client) -> Any:
        return (await payments.get("/x")).json()

    @get("/quota")
    async def quota(quota: Client) -> Any:
        return (await quota.get("/q")).json()

    @post("/charge")
    async def charge(payments: Client) -> Any:
        return (await payments.post("/hang")).json()

    @get("/slow")
    async def slow(fwd: Client) -> Any:
        return (await fwd.get("/hang")).json()

    # The 0.1 s attempt timeout cuts the charge well before this deadline does.
    app = make_app(registry, [opened, quota, charge, slow], deadline=0.6)
    async with run_lifespan(app), asgi_client(app) as client:
        with anyio.fail_after(5):
            unknown = await client.post("/charge")
            cut = await client.get("/slow")
        assert (await client.get("/quota")).status_code == 200
        limited = await client.get("/quota")
        registry.breaker("payments").force_open()
        rejected = await client.get("/open")
    assert_problem(unknown, 502, "outcome_unknown", "payments")
    assert_problem(cut, 504, "deadline_exceeded", "fwd")
    assert_problem(limited, 503, "rate_limited", "quota")
    assert limited.headers["retry-after"] == "20"
    assert_problem(rejected, 503, "circuit_open", "payments")
    assert rejected.headers["retry-after"] == "1"
    assert upstream.count("/x") == 0


async def test_rate_limited_status_option(upstream: FaultyUpstream, clock: ManualClock) -> None:
    registry = make_registry(upstream, clock)

    @get("/quota")
    async def quota(quota: Client) -> Any:
        return (await quota.get("/q")).json()

    app = make_app(registry, [quota], rate_limited_status=429)
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/quota")).status_code == 200
        limited = await client.get("/quota")
    assert_problem(limited, 429, "rate_limited", "quota")
    assert limited.headers["retry-after"] == "20"


async def test_a_timed_out_call_becomes_504(upstream: FaultyUpstream) -> None:
    """A seawall call cut by its attempt timeout is a 504, as under Starlette."""
    upstream.route("/hang", Fault.hang())
    registry = make_registry(upstream)

    @get("/hang")
    async def hang(payments: Client) -> Any:
        return (await payments.get("/hang")).json()

    app = make_app(registry, [hang])
    async with run_lifespan(app), asgi_client(app) as client:
        with anyio.fail_after(5):
            response = await client.get("/hang")
    assert_problem(response, 504, "timeout", "payments")


async def test_other_errors_keep_litestars_own_answer(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)

    @get("/value")
    async def value() -> Any:
        raise ValueError("boom")

    @get("/timeout")
    async def timeout() -> Any:
        raise TimeoutError("not a seawall call")

    @get("/config")
    async def config() -> Any:
        raise seawall.ConfigError(["x: bad, got 1"])

    plain = Litestar(route_handlers=[value, timeout, config], logging_config=None)
    app = make_app(registry, [value, timeout, config])
    async with run_lifespan(plain), asgi_client(plain) as client:
        expected = {path: await client.get(path) for path in ("/value", "/timeout", "/config")}
    async with run_lifespan(app), asgi_client(app) as client:
        for path, without_plugin in expected.items():
            response = await client.get(path)
            assert response.status_code == 500, path
            assert response.headers["content-type"] == without_plugin.headers["content-type"]
            assert response.json() == without_plugin.json()


async def test_load_shedding_through_the_plugin() -> None:
    registry = seawall.Registry()
    entered: list[int] = []
    all_in, release = anyio.Event(), anyio.Event()

    @get("/hold")
    async def hold() -> Any:
        entered.append(1)
        all_in.set()
        await release.wait()
        return {"ok": True}

    app = make_app(registry, [hold], max_concurrent_requests=1)
    async with run_lifespan(app), asgi_client(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/hold")
        with anyio.fail_after(2):
            await all_in.wait()
        shed = await client.get("/hold")
        release.set()
    assert entered == [1]
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["reason"] == "overloaded"


async def test_provide_client_without_the_plugin_is_a_server_error() -> None:
    @get("/pay")
    async def pay(payments: Client) -> Any:  # pragma: no cover - never reached
        return {}

    app = Litestar(
        route_handlers=[pay],
        dependencies={"payments": seawall.litestar.provide_client("payments")},
        logging_config=None,
    )
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/pay")).status_code == 500


async def test_the_apps_own_exception_handlers_keep_answering_other_errors(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/hang", Fault.hang())
    registry = make_registry(upstream)

    def teapot(request: Any, exc: Exception) -> Response[Any]:
        return Response({"mine": type(exc).__name__}, status_code=418)

    @get("/timeout")
    async def timeout() -> Any:
        raise TimeoutError("not a seawall call")

    @get("/config")
    async def config() -> Any:
        raise seawall.ConfigError(["x: bad, got 1"])

    @get("/hang")
    async def hang(payments: Client) -> Any:
        return (await payments.get("/hang")).json()

    app = Litestar(
        route_handlers=[timeout, config, hang],
        plugins=[seawall.litestar.ResiliencePlugin(registry)],
        dependencies={"payments": seawall.litestar.provide_client("payments")},
        exception_handlers={Exception: teapot},
        logging_config=None,
    )
    async with run_lifespan(app), asgi_client(app) as client:
        own_timeout = await client.get("/timeout")
        config_error = await client.get("/config")
        with anyio.fail_after(5):
            seawall_timeout = await client.get("/hang")
    assert (own_timeout.status_code, own_timeout.json()) == (418, {"mine": "TimeoutError"})
    assert (config_error.status_code, config_error.json()) == (418, {"mine": "ConfigError"})
    assert_problem(seawall_timeout, 504, "timeout", "payments")


async def test_the_apps_own_seawall_error_handler_is_kept() -> None:
    @get("/")
    async def refused() -> None:
        raise seawall.CircuitOpenError("open", dependency="payments")

    def mine(request: Any, exc: Exception) -> Response[str]:
        return Response("ours", status_code=418)

    app = Litestar(
        route_handlers=[refused],
        plugins=[seawall.litestar.ResiliencePlugin(seawall.Registry())],
        exception_handlers={seawall.SeawallError: mine},
        logging_config=None,
    )
    async with asgi_client(app) as client:
        response = await client.get("/")
    assert response.status_code == 418
    assert response.text == "ours"
