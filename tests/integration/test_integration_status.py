"""The status app: the snapshot as JSON, and token-guarded breaker actions, under a prefix."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from integration_support import asgi_client, run_lifespan
from starlette.applications import Starlette
from starlette.routing import Mount

import seawall
from seawall.asgi import status_app
from seawall.testing._upstream import FaultyUpstream

pytestmark = pytest.mark.anyio

TOKEN = "adm1n-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/_resilience"


def make_registry(upstream: FaultyUpstream) -> seawall.Registry:
    secret_url = upstream.url.replace("http://", "http://svc:s3cret@")
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=secret_url,
        headers={"Authorization": "Bearer upstream-tok"},
        policy=seawall.Policy(retry=None),
    )
    registry.add("pg", endpoints=["https://user:pw@pg-a.example", "https://pg-b.example"])
    registry.add("cache", policy=seawall.Policy(breaker=None))
    return registry


def mounted(framework: str, registry: seawall.Registry, admin_token: str | None) -> Any:
    status = status_app(registry, admin_token=admin_token)
    if framework == "starlette":
        return Starlette(routes=[Mount(PREFIX, status)], lifespan=registry.lifespan)
    app = FastAPI(lifespan=registry.lifespan)
    app.mount(PREFIX, status)
    return app


@pytest.fixture(params=["starlette", "fastapi"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def assert_no_secret(response: httpx.Response) -> None:
    text = response.text
    for secret in (TOKEN, "s3cret", "svc:", "user:pw", "upstream-tok", "Bearer"):
        assert secret not in text, (secret, text)


async def test_get_serves_the_snapshot_as_json(framework: str, upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)
    app = mounted(framework, registry, TOKEN)
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await registry.client("payments").get("/x")).status_code == 200
        response = await client.get(f"{PREFIX}/")
        expected = json.loads(json.dumps(registry.snapshot()))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body == expected
    assert sorted(body["dependencies"]) == ["cache", "payments", "pg"]
    assert body["dependencies"]["payments"]["breaker"]["calls"] == 1
    assert body["dependencies"]["cache"]["breaker"] is None
    assert [e["url"] for e in body["dependencies"]["pg"]["endpoints"]] == [
        "https://pg-a.example",
        "https://pg-b.example",
    ]
    assert_no_secret(response)
    assert "pw" not in response.text


async def test_breaker_actions_change_state_and_answer_the_entry(
    framework: str, upstream: FaultyUpstream
) -> None:
    registry = make_registry(upstream)
    app = mounted(framework, registry, TOKEN)
    breaker = registry.breaker("payments")
    async with run_lifespan(app), asgi_client(app) as client:
        response = await client.post(f"{PREFIX}/payments/breaker/force-open", headers=AUTH)
        assert response.status_code == 200
        assert response.json() == json.loads(json.dumps(registry.dependency_snapshot("payments")))
        assert response.json()["breaker"]["state"] == "forced_open"
        assert breaker.state == seawall.BreakerState.FORCED_OPEN
        assert_no_secret(response)
        with pytest.raises(seawall.CircuitOpenError):
            await registry.client("payments").get("/x")
        assert upstream.count() == 0

        for action, state in (
            ("force-closed", "closed"),
            ("disable", "disabled"),
            ("reset", "closed"),
        ):
            response = await client.post(f"{PREFIX}/payments/breaker/{action}", headers=AUTH)
            assert response.status_code == 200, action
            assert response.json()["breaker"]["state"] == state
            assert breaker.state.value == state
        assert (await registry.client("payments").get("/x")).status_code == 200

        # A dependency with one breaker per endpoint: every one of them.
        response = await client.post(f"{PREFIX}/pg/breaker/force-open", headers=AUTH)
        assert response.status_code == 200
        assert [e["breaker"]["state"] for e in response.json()["endpoints"]] == [
            "forced_open",
            "forced_open",
        ]
        assert all(
            b.state == seawall.BreakerState.FORCED_OPEN for b in registry.breakers("pg").values()
        )
        assert "pw" not in response.text


async def test_a_missing_or_wrong_token_is_401_before_anything_else(
    framework: str, upstream: FaultyUpstream
) -> None:
    registry = make_registry(upstream)
    app = mounted(framework, registry, TOKEN)
    attempts = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ]
    async with run_lifespan(app), asgi_client(app) as client:
        for headers in attempts:
            for path in ("payments/breaker/force-open", "nope/breaker/reset", "payments/x/y"):
                response = await client.post(f"{PREFIX}/{path}", headers=headers)
                assert response.status_code == 401, (headers, path)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert_no_secret(response)
    assert registry.breaker("payments").state == seawall.BreakerState.CLOSED


async def test_unknown_dependency_or_action_is_404(
    framework: str, upstream: FaultyUpstream
) -> None:
    registry = make_registry(upstream)
    app = mounted(framework, registry, TOKEN)
    async with run_lifespan(app), asgi_client(app) as client:
        for path in (
            "nope/breaker/force-open",
            "payments/breaker/explode",
            "payments/breaker",
            "payments/bulkhead/reset",
            "cache/breaker/force-open",  # no breaker in its policy
        ):
            response = await client.post(f"{PREFIX}/{path}", headers=AUTH)
            assert response.status_code == 404, path
    assert registry.breaker("payments").state == seawall.BreakerState.CLOSED


async def test_without_an_admin_token_there_are_no_actions(
    framework: str, upstream: FaultyUpstream
) -> None:
    registry = make_registry(upstream)
    app = mounted(framework, registry, None)
    async with run_lifespan(app), asgi_client(app) as client:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            response = await client.post(f"{PREFIX}/payments/breaker/force-open", headers=headers)
            assert response.status_code == 404
        assert (await client.get(f"{PREFIX}/")).status_code == 200
    assert registry.breaker("payments").state == seawall.BreakerState.CLOSED


async def test_a_reloaded_registry_is_served_as_it_is_now(upstream: FaultyUpstream) -> None:
    registry = seawall.Registry.from_config(
        {"dependencies": {"payments": {"base_url": upstream.url}}}
    )
    app = mounted("starlette", registry, TOKEN)
    async with run_lifespan(app), asgi_client(app) as client:
        registry.reload({"dependencies": {"search": {"base_url": upstream.url}}})
        assert list((await client.get(f"{PREFIX}/")).json()["dependencies"]) == ["search"]
        response = await client.post(f"{PREFIX}/payments/breaker/force-open", headers=AUTH)
        assert response.status_code == 404


async def test_the_status_app_also_runs_on_its_own(upstream: FaultyUpstream) -> None:
    registry = make_registry(upstream)
    app = status_app(registry, admin_token=TOKEN)
    async with run_lifespan(app), asgi_client(app) as client:
        assert (await client.get("/")).json() == json.loads(json.dumps(registry.snapshot()))
        response = await client.post("/payments/breaker/force-open", headers=AUTH)
        assert response.json()["breaker"]["state"] == "forced_open"
        assert (await client.put("/", headers=AUTH)).status_code == 405
    assert registry.breaker("payments").state == seawall.BreakerState.FORCED_OPEN
