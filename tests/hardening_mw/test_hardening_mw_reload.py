"""Item 14: reload keeps a transport given in code, and closes retired clients promptly."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


def config(base_url: str, **policy: Any) -> dict[str, Any]:
    return {"dependencies": {"payments": {"base_url": base_url, "retry": False, **policy}}}


async def connections_drop_to(upstream: FaultyUpstream, expected: int) -> bool:
    """Whether the upstream's open connections reach *expected* within 2 s (polled, async:
    the upstream's state lives in its own thread)."""
    for _ in range(200):
        if upstream.open_connections == expected:
            return True
        await anyio.sleep(0.01)
    return False


def mock() -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"mock": True})

    return httpx.MockTransport(answer), seen


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"timeouts": {"total": 2.0, "read": 1.5}}, id="timeouts"),
        pytest.param({"pool": {"max_connections": 50}}, id="pool"),
        pytest.param({"headers": {"X-Version": "2"}}, id="httpx-options"),
    ],
)
async def test_reload_keeps_a_mock_transport_given_in_code(change: dict[str, Any]) -> None:
    transport, seen = mock()
    registry = seawall.Registry()
    registry.add("payments", base_url="https://payments.invalid", transport=transport)
    async with registry:
        registry.reload(config("https://payments.invalid", **change))
        client = registry.client("payments")
        assert client.resilient_transport.inner is transport
        response = await client.get("/charges/1")
    assert response.json() == {"mock": True}
    assert seen == ["https://payments.invalid/charges/1"]
    if "timeouts" in change:
        assert client.policy.timeouts.total == 2.0
        assert client.timeout.read == 1.5


async def test_a_new_base_url_goes_to_the_kept_transport() -> None:
    transport, seen = mock()
    registry = seawall.Registry()
    registry.add("payments", base_url="https://a.invalid", transport=transport)
    async with registry:
        registry.reload(config("https://b.invalid"))
        await registry.client("payments").get("/x")
    assert seen == ["https://b.invalid/x"]


async def test_a_kept_transport_is_shared_not_closed_by_the_retired_client(
    upstream: FaultyUpstream,
) -> None:
    transport = httpx.AsyncHTTPTransport()
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, transport=transport)
    async with registry:
        old = registry.client("payments")
        assert (await old.get("/a")).status_code == 200
        registry.reload(config(upstream.url, timeouts={"total": 3.0}))
        new = registry.client("payments")
        assert new is not old
        assert new.resilient_transport.inner is transport
        await anyio.sleep(0.05)  # room for any background close to run
        # The same pooled connection serves both the new client and a handle kept from before.
        assert (await new.get("/b")).status_code == 200
        assert (await old.get("/c")).status_code == 200
        assert upstream.open_connections == 1
    assert await connections_drop_to(upstream, 0)  # the registry closed it on exit


async def test_connection_options_for_a_kept_transport_are_refused_before_any_change() -> None:
    transport, _ = mock()
    registry = seawall.Registry()
    registry.add("payments", base_url="https://payments.invalid", transport=transport)
    before = registry.client("payments")
    with pytest.raises(seawall.ConfigError) as info:
        registry.reload(config("https://payments.invalid", verify=False, timeouts={"total": 2.0}))
    (problem,) = info.value.problems
    assert problem.startswith("dependencies.payments: verify cannot apply to the transport")
    assert registry.client("payments") is before
    assert before.policy.timeouts.total != 2.0
    await registry.aclose()


async def test_an_idle_retired_client_closes_its_pool_at_once(upstream: FaultyUpstream) -> None:
    registry = seawall.Registry.from_config(config(upstream.url))
    async with registry:
        await registry.client("payments").get("/warm")
        assert upstream.open_connections == 1
        # A new pool size: a new client; the old one is idle.
        registry.reload(config(upstream.url, pool={"max_connections": 50}))
        # Closed now, not when the registry closes.
        assert await connections_drop_to(upstream, 0)
        assert (await registry.client("payments").get("/again")).status_code == 200


async def test_an_idle_removed_client_closes_its_pool_at_once(upstream: FaultyUpstream) -> None:
    data = config(upstream.url)
    data["dependencies"]["legacy"] = {"base_url": upstream.url}
    registry = seawall.Registry.from_config(data)
    async with registry:
        await registry.client("legacy").get("/warm")
        assert upstream.open_connections == 1
        registry.reload(config(upstream.url))
        assert await connections_drop_to(upstream, 0)


async def test_a_busy_retired_client_closes_its_pool_when_its_call_ends(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/slow", Fault.latency(0.2))
    registry = seawall.Registry.from_config(config(upstream.url))
    results: list[int] = []

    async def call() -> None:
        results.append((await registry.client("payments").get("/slow")).status_code)

    async with registry, anyio.create_task_group() as tg:
        tg.start_soon(call)
        for _ in range(400):
            if upstream.count("/slow"):
                break
            await anyio.sleep(0.005)
        registry.reload(config(upstream.url, timeouts={"total": 5.0}))
        assert upstream.open_connections == 1  # the call in flight is not cut
        await anyio.sleep(0.3)
        assert results == [200]
        assert await connections_drop_to(upstream, 0)


async def test_reload_outside_the_event_loop_leaves_retired_clients_to_the_registry(
    upstream: FaultyUpstream,
) -> None:
    registry = seawall.Registry.from_config(config(upstream.url))
    await registry.client("payments").get("/warm")
    # From a worker thread: no event loop to close the old pool in.
    await anyio.to_thread.run_sync(
        registry.reload, config(upstream.url, pool={"max_connections": 50})
    )
    await anyio.sleep(0.05)
    assert upstream.open_connections == 1
    await registry.aclose()
    assert await connections_drop_to(upstream, 0)
