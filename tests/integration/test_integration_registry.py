"""Registry: building, handles, lifecycle, snapshot and reload, against a real upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from integration_support import asgi_client, eventually, run_lifespan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

BREAKER_KEYS = {
    "state",
    "failure_rate",
    "slow_call_rate",
    "calls",
    "failures",
    "slow_calls",
    "retry_after",
    "consecutive_openings",
}


def fast_policy(**changes: Any) -> seawall.Policy:
    """No retries, a small breaker window, short timeouts."""
    parts: dict[str, Any] = {
        "retry": None,
        "breaker": seawall.CircuitBreaker(minimum_calls=4, window_size=10, open_duration=30.0),
        "timeouts": seawall.Timeouts(attempt=2.0, total=3.0),
    }
    parts.update(changes)
    return seawall.Policy(**parts)


def config(upstream_url: str, **payments: Any) -> dict[str, Any]:
    """A configuration mapping in the TOML layout, with a "payments" dependency."""
    return {
        "defaults": {
            "retry": False,
            "timeouts": {"attempt": 2.0, "total": 3.0},
            "breaker": {"minimum_calls": 4, "window_size": 10, "open_duration": 30.0},
        },
        "dependencies": {"payments": {"base_url": upstream_url, **payments}},
    }


async def wait_for_connections(upstream: FaultyUpstream, expected: int) -> bool:
    return await anyio.to_thread.run_sync(
        lambda: upstream.wait_for_open_connections(expected, timeout=2.0)
    )


# -- building and handles ------------------------------------------------------------


async def test_add_then_client_talks_to_the_upstream_with_httpx_keywords(
    upstream: FaultyUpstream,
) -> None:
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=fast_policy(),
        headers={"X-Api-Key": "key-1"},
        auth=("svc", "pw"),
        verify=False,
    )
    async with registry:
        client = registry.client("payments")
        assert isinstance(client, seawall.ResilientClient)
        assert client is registry.client("payments")
        response = await client.get("/orders")
    assert response.json() == {"path": "/orders", "n": 1}
    (request,) = upstream.requests("/orders")
    assert request.header("x-api-key") == "key-1"
    assert request.header("authorization") == httpx.BasicAuth("svc", "pw")._auth_header


async def test_add_refuses_a_duplicate_and_unknown_names_are_lookup_errors(
    upstream: FaultyUpstream,
) -> None:
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("payments", base_url=upstream.url)
    for handle in (registry.client, registry.breaker, registry.dependency_snapshot):
        with pytest.raises(LookupError, match="unknown dependency 'nope'"):
            handle("nope")
    with pytest.raises(LookupError):
        registry.guard("nope")
    registry.add("db", policy=fast_policy())
    with pytest.raises(LookupError, match="use guard"):
        registry.client("db")
    await registry.aclose()


async def test_from_config_merges_defaults_and_passes_httpx_options(
    upstream: FaultyUpstream,
) -> None:
    data = config(
        upstream.url,
        headers={"X-Service": "shop"},
        auth=["svc", "pw"],
        breaker={"open_duration": 7.0},
    )
    data["dependencies"]["db"] = {"bulkhead": {"max_concurrent": 3}}
    registry = seawall.Registry.from_config(data)
    assert sorted(registry.names) == ["db", "payments"]
    payments = registry.spec("payments").policy
    assert payments.breaker is not None
    assert (payments.breaker.minimum_calls, payments.breaker.open_duration) == (4, 7.0)
    assert payments.retry is None
    db = registry.spec("db").policy
    assert db.breaker is not None
    assert db.breaker.open_duration == 30.0
    async with registry:
        assert (await registry.client("payments").get("/x")).status_code == 200
        with pytest.raises(LookupError):
            registry.client("db")
        assert await registry.guard("db").call(anyio.sleep, 0) is None
    (request,) = upstream.requests("/x")
    assert request.header("x-service") == "shop"
    assert request.header("authorization") == httpx.BasicAuth("svc", "pw")._auth_header
    snapshot = registry.snapshot()["dependencies"]
    assert snapshot["db"]["bulkhead"] == {"in_use": 0, "limit": 3, "waiting": 0}
    assert snapshot["db"]["pool"] is None


async def test_from_toml_reads_defaults_and_dependency_tables(
    upstream: FaultyUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        f"""
[defaults]
retry = false
timeouts = {{ attempt = 2.0, total = 3.0 }}

[defaults.breaker]
minimum_calls = 4
window_size = 10

[dependencies.payments]
base_url = "{upstream.url}"
headers = {{ "X-Service" = "shop" }}
bulkhead = {{ max_concurrent = 5 }}

[dependencies.payments.breaker]
open_duration = 7.0

[dependencies.db]
rate_limit = {{ rate = 10.0 }}
"""
    )
    registry = seawall.Registry.from_toml(path)
    async with registry:
        response = await registry.client("payments").get("/toml")
    assert response.status_code == 200
    assert upstream.requests("/toml")[0].header("x-service") == "shop"
    breaker = registry.breaker("payments").config
    assert (breaker.minimum_calls, breaker.window_size, breaker.open_duration) == (4, 10, 7.0)
    entries = registry.snapshot()["dependencies"]
    assert entries["payments"]["bulkhead"]["limit"] == 5
    assert entries["payments"]["rate_limit"] is None
    assert entries["db"]["rate_limit"] is not None
    assert entries["db"]["rate_limit"]["rate"] == 10.0
    assert entries["db"]["bulkhead"] is None


async def test_unknown_keys_are_config_errors_naming_every_one(tmp_path: Path) -> None:
    data = {
        "defaults": {"retyr": {"attempts": 2}},
        "dependencies": {
            "payments": {
                "base_url": "https://pay.example",
                "timeout": 3,
                "breaker": {"minimum_call": 3},
            }
        },
        "extra": 1,
    }
    with pytest.raises(seawall.ConfigError) as excinfo:
        seawall.Registry.from_config(data)
    problems = "\n".join(excinfo.value.problems)
    for key in (
        "defaults.retyr",
        "dependencies.payments.timeout",
        "dependencies.payments.breaker.minimum_call",
        "extra",
    ):
        assert f"{key}: unknown key" in problems, problems

    path = tmp_path / "bad.toml"
    path.write_text('[dependencies.payments]\nbase_url = "https://pay.example"\nretries = 3\n')
    with pytest.raises(seawall.ConfigError, match=r"dependencies\.payments\.retries: unknown key"):
        seawall.Registry.from_toml(path)


# -- shared state: client, breaker, guard --------------------------------------------


async def test_guard_breaker_and_client_share_one_state(upstream: FaultyUpstream) -> None:
    registry = seawall.Registry.from_config(config(upstream.url))
    guard = registry.guard("payments")
    client = registry.client("payments")
    assert guard.breaker is registry.breaker("payments") is client.breaker

    async def broken() -> None:
        raise ConnectionError("db gone")

    async with registry:
        for _ in range(4):
            with pytest.raises(ConnectionError):
                await guard.call(broken)
        assert registry.breaker("payments").state == seawall.BreakerState.OPEN
        # The HTTP client of the same dependency now fails fast without sending.
        with pytest.raises(seawall.CircuitOpenError) as excinfo:
            await client.get("/x")
    assert excinfo.value.dependency == "payments"
    assert upstream.count() == 0
    # A different policy for the same name is refused; the same policy is fine.
    with pytest.raises(ValueError, match="different policy"):
        registry.guard("payments", seawall.Policy())
    assert registry.guard("payments", registry.spec("payments").policy).breaker is guard.breaker


async def test_breaker_lookups_explain_what_is_missing() -> None:
    registry = seawall.Registry()
    registry.add("plain", policy=fast_policy(breaker=None))
    registry.add("pg", endpoints=["https://pg-a.example", "https://pg-b.example"])
    with pytest.raises(LookupError, match="no circuit breaker"):
        registry.breaker("plain")
    with pytest.raises(LookupError, match="one breaker per endpoint"):
        registry.breaker("pg")
    assert sorted(registry.breakers("pg")) == ["https://pg-a.example", "https://pg-b.example"]
    assert registry.breakers("plain") == {}
    await registry.aclose()


# -- lifecycle -----------------------------------------------------------------------


async def test_async_with_closes_every_pool(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    registry = seawall.Registry()
    registry.add("a", base_url=upstream.url, policy=fast_policy())
    registry.add("b", base_url=upstream_b.url, policy=fast_policy())
    async with registry as entered:
        assert entered is registry
        await registry.client("a").get("/x")
        await registry.client("b").get("/x")
        assert upstream.open_connections == 1
        assert upstream_b.open_connections == 1
        assert registry.snapshot()["dependencies"]["a"]["pool"]["connections"] == 1
    assert await wait_for_connections(upstream, 0)
    assert await wait_for_connections(upstream_b, 0)


async def test_a_registry_can_be_entered_again_after_closing(upstream: FaultyUpstream) -> None:
    """A second lifespan (a second test client, say) must find working clients."""
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=fast_policy())
    client = registry.client("payments")
    async with registry:
        assert (await client.get("/x")).status_code == 200
    assert await wait_for_connections(upstream, 0)
    async with registry:
        assert (await registry.client("payments").get("/x")).status_code == 200
        assert (await client.get("/x")).status_code == 200
    assert await wait_for_connections(upstream, 0)
    assert upstream.count("/x") == 3


async def test_registry_lifespan_plugs_into_starlette(upstream: FaultyUpstream) -> None:
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=fast_policy())

    async def pay(request: Request) -> Response:
        response = await registry.client("payments").get("/charge")
        return JSONResponse(response.json())

    app = Starlette(routes=[Route("/pay", pay)], lifespan=registry.lifespan)
    async with run_lifespan(app):
        async with asgi_client(app) as client:
            assert (await client.get("/pay")).json() == {"path": "/charge", "n": 1}
        assert upstream.open_connections == 1
    # Shutdown closed the pool.
    assert await wait_for_connections(upstream, 0)


# -- snapshot ------------------------------------------------------------------------


async def test_snapshot_shape_for_a_base_url_dependency(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=fast_policy(
            breaker=seawall.CircuitBreaker(minimum_calls=20),
            bulkhead=seawall.Bulkhead(max_concurrent=20),
        ),
    )
    async with registry:
        for _ in range(12):
            assert (await registry.client("payments").get("/x")).status_code == 200
        snapshot = registry.snapshot()
        assert registry.dependency_snapshot("payments") == snapshot["dependencies"]["payments"]
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert list(snapshot) == ["dependencies"]
    entry = snapshot["dependencies"]["payments"]
    assert set(entry) == {"breaker", "bulkhead", "rate_limit", "pool", "endpoints"}
    assert set(entry["breaker"]) == BREAKER_KEYS
    assert entry["breaker"]["state"] == "closed"
    assert entry["breaker"]["calls"] == 12
    # Fewer calls than minimum_calls: no rate yet.
    assert entry["breaker"]["failure_rate"] is None
    assert entry["breaker"]["slow_call_rate"] is None
    assert entry["breaker"]["retry_after"] is None
    assert entry["bulkhead"] == {"in_use": 0, "limit": 20, "waiting": 0}
    assert entry["rate_limit"] is None
    assert entry["endpoints"] == []
    assert entry["pool"]["max_connections"] == 100
    assert entry["pool"]["in_flight"] == 0
    assert entry["pool"]["connections"] == 1


async def test_snapshot_rates_appear_at_minimum_calls_and_parts_off_are_null(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(500))
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=fast_policy(
            breaker=seawall.CircuitBreaker(minimum_calls=5, window_size=10),
            rate_limit=seawall.RateLimit(rate=100.0),
        ),
    )
    registry.add("nobreaker", base_url=upstream.url, policy=fast_policy(breaker=None))
    async with registry:
        client = registry.client("payments")
        assert (await client.get("/fail")).status_code == 500
        for _ in range(3):
            await client.get("/ok")
        assert registry.snapshot()["dependencies"]["payments"]["breaker"]["failure_rate"] is None
        await client.get("/ok")
        entry = registry.snapshot()["dependencies"]["payments"]
    assert entry["breaker"]["failure_rate"] == pytest.approx(0.2)
    assert entry["breaker"]["slow_call_rate"] == 0.0
    assert (entry["breaker"]["calls"], entry["breaker"]["failures"]) == (5, 1)
    assert entry["bulkhead"] is None
    assert entry["rate_limit"] is not None
    assert entry["rate_limit"]["rate"] == 100.0
    other = registry.snapshot()["dependencies"]["nobreaker"]
    assert other["breaker"] is None
    assert other["rate_limit"] is None


async def test_snapshot_spells_every_breaker_state(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(503))
    registry = seawall.Registry(clock=clock)
    registry.add("payments", base_url=upstream.url, policy=fast_policy())

    def state() -> Any:
        return registry.snapshot()["dependencies"]["payments"]["breaker"]

    async with registry:
        for _ in range(4):
            await registry.client("payments").get("/fail")
    assert state()["state"] == "open"
    assert state()["retry_after"] == 30.0
    assert state()["failure_rate"] == 1.0
    clock.advance(30.0)
    assert state()["state"] == "half_open"
    breaker = registry.breaker("payments")
    breaker.force_open()
    assert state()["state"] == "forced_open"
    breaker.disable()
    assert state()["state"] == "disabled"
    breaker.reset()
    assert state() | {"consecutive_openings": 0} == {
        "state": "closed",
        "failure_rate": None,
        "slow_call_rate": None,
        "calls": 0,
        "failures": 0,
        "slow_calls": 0,
        "retry_after": None,
        "consecutive_openings": 0,
    }


async def test_snapshot_lists_endpoints_without_credentials(upstream: FaultyUpstream) -> None:
    registry = seawall.Registry()
    registry.add(
        "pg",
        endpoints=["https://user:pw@pg-a.example", "https://pg-b.example"],
        policy=fast_policy(),
    )
    registry.add("payments", base_url="https://svc:s3cret@pay.example", policy=fast_policy())
    snapshot = registry.snapshot()
    text = json.dumps(snapshot)
    entry = snapshot["dependencies"]["pg"]
    assert entry["breaker"] is None
    assert [ep["url"] for ep in entry["endpoints"]] == [
        "https://pg-a.example",
        "https://pg-b.example",
    ]
    for ep in entry["endpoints"]:
        assert set(ep) == {"url", "breaker"}
        assert set(ep["breaker"]) == BREAKER_KEYS
        assert ep["breaker"]["state"] == "closed"
    assert "user:pw@" not in text
    assert "pw" not in text
    assert "s3cret" not in text
    assert "svc" not in text
    await registry.aclose()


async def test_snapshot_counts_a_call_in_flight(upstream: FaultyUpstream) -> None:
    upstream.route("/slow", Fault.latency(0.2))
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=fast_policy(bulkhead=seawall.Bulkhead(max_concurrent=4)),
    )
    seen: list[dict[str, Any]] = []
    async with registry, anyio.create_task_group() as tg:
        tg.start_soon(registry.client("payments").get, "/slow")
        await eventually(lambda: upstream.count("/slow") == 1)
        seen.append(registry.dependency_snapshot("payments"))
    assert seen[0]["bulkhead"]["in_use"] == 1
    assert seen[0]["pool"]["in_flight"] == 1
    after = registry.dependency_snapshot("payments")
    assert after["bulkhead"]["in_use"] == 0
    assert after["pool"]["in_flight"] == 0


# -- reload --------------------------------------------------------------------------


async def test_reload_keeps_an_unchanged_breaker_with_its_window(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(500))
    registry = seawall.Registry.from_config(config(upstream.url), clock=clock)
    async with registry:
        for _ in range(3):
            await registry.client("payments").get("/fail")
        before = registry.breaker("payments")
        # A bulkhead is added; the breaker settings are the same.
        registry.reload(config(upstream.url, bulkhead={"max_concurrent": 2}))
        assert registry.breaker("payments") is before
        entry = registry.dependency_snapshot("payments")
        assert entry["breaker"]["calls"] == 3
        assert entry["bulkhead"]["limit"] == 2
        # The kept window still counts: one more failure reaches minimum_calls and opens.
        await registry.client("payments").get("/fail")
        assert registry.breaker("payments").state == seawall.BreakerState.OPEN


async def test_reload_keeps_an_open_breaker_open_even_with_a_new_client(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(500))
    registry = seawall.Registry.from_config(config(upstream.url), clock=clock)
    async with registry:
        old_client = registry.client("payments")
        for _ in range(4):
            await old_client.get("/fail")
        assert registry.breaker("payments").state == seawall.BreakerState.OPEN
        # New timeouts: the client is rebuilt, the breaker is not.
        registry.reload(config(upstream.url, timeouts={"attempt": 1.0, "total": 2.0}))
        new_client = registry.client("payments")
        assert new_client is not old_client
        assert new_client.policy.timeouts.attempt == 1.0
        assert registry.dependency_snapshot("payments")["breaker"]["state"] == "open"
        with pytest.raises(seawall.CircuitOpenError):
            await new_client.get("/ok")
    assert upstream.count("/ok") == 0


async def test_reload_gives_a_changed_breaker_a_fresh_state(
    upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/fail", Fault.error(500))
    registry = seawall.Registry.from_config(config(upstream.url), clock=clock)
    async with registry:
        for _ in range(4):
            await registry.client("payments").get("/fail")
        old = registry.breaker("payments")
        assert old.state == seawall.BreakerState.OPEN
        registry.reload(config(upstream.url, breaker={"open_duration": 5.0}))
        fresh = registry.breaker("payments")
        assert fresh is not old
        assert fresh.config.open_duration == 5.0
        assert registry.dependency_snapshot("payments")["breaker"]["state"] == "closed"
        assert registry.dependency_snapshot("payments")["breaker"]["calls"] == 0
        assert registry.guard("payments").breaker is fresh
        assert (await registry.client("payments").get("/ok")).status_code == 200


async def test_reload_adds_and_removes_dependencies(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream, tmp_path: Path
) -> None:
    registry = seawall.Registry.from_config(config(upstream.url))
    registry.add("legacy", base_url=upstream_b.url, policy=fast_policy())
    path = tmp_path / "resilience.toml"
    path.write_text(
        f"""
[dependencies.payments]
base_url = "{upstream.url}"

[dependencies.search]
base_url = "{upstream_b.url}"
retry = false
"""
    )
    async with registry:
        registry.reload(path)
        assert sorted(registry.names) == ["payments", "search"]
        assert "legacy" not in registry
        assert "legacy" not in registry.snapshot()["dependencies"]
        for handle in (registry.client, registry.breaker, registry.dependency_snapshot):
            with pytest.raises(LookupError):
                handle("legacy")
        with pytest.raises(LookupError):
            registry.guard("legacy")
        response = await registry.client("search").get("/q")
        assert response.json() == {"path": "/q", "n": 1}
        assert registry.dependency_snapshot("search")["breaker"]["state"] == "closed"


async def test_reload_closes_a_removed_client_once_its_call_in_flight_ends(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    upstream_b.route("/slow", Fault.latency(0.2))
    data = config(upstream.url)
    data["dependencies"]["legacy"] = {"base_url": upstream_b.url}
    registry = seawall.Registry.from_config(data)
    results: list[httpx.Response] = []

    async def call() -> None:
        results.append(await registry.client("legacy").get("/slow"))

    async with registry:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await eventually(lambda: upstream_b.count("/slow") == 1)
            registry.reload(config(upstream.url))
            with pytest.raises(LookupError):
                registry.client("legacy")
            # The call in flight is not cut by the reload.
            assert upstream_b.open_connections == 1
        assert results[0].status_code == 200
        # It was the last call in flight: its pool is closed now, not at registry exit.
        assert await wait_for_connections(upstream_b, 0)
        assert (await registry.client("payments").get("/x")).status_code == 200


async def test_reload_validates_everything_before_changing_anything(
    upstream: FaultyUpstream,
) -> None:
    registry = seawall.Registry.from_config(config(upstream.url))
    breaker = registry.breaker("payments")
    bad = config(upstream.url, bulkhead={"max_concurrent": 0})
    bad["dependencies"]["search"] = {"base_url": "ftp://nope"}
    with pytest.raises(seawall.ConfigError) as excinfo:
        registry.reload(bad)
    assert any("bulkhead.max_concurrent" in p for p in excinfo.value.problems)
    assert any("search.base_url" in p for p in excinfo.value.problems)
    assert registry.names == ["payments"]
    assert registry.breaker("payments") is breaker
    assert registry.dependency_snapshot("payments")["bulkhead"] is None
    await registry.aclose()
